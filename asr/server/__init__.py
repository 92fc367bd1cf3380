"""The recognition server: WebSocket (browsers, scripts) and Wyoming (Home Assistant,
Rhasspy) front ends over one decode worker that batches the ready streams of every
connection. Modules: config, protocol (WebSocket messages), sessions (decode worker and
per-connection sessions), metrics, websocket_app, page, wyoming_handler, service (runs it
all), client."""
