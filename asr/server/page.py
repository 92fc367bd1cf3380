"""GET /: a page that streams the microphone to /ws and shows partial and final text."""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>speechkit: live transcription</title>
<style>
  body { font-family: sans-serif; max-width: 50em; margin: 2em auto; }
  #partial { color: #777; font-style: italic; min-height: 1.5em; }
  #finals p { margin: .3em 0; }
  #status { font-size: .9em; color: #555; }
</style>
</head>
<body>
<h1>Live transcription</h1>
<p><button id="start">Start</button> <button id="stop" disabled>Stop</button>
   <span id="status">idle</span></p>
<div id="finals"></div>
<div id="partial"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let ws = null, context = null, source = null, processor = null, media = null;

function setStatus(text) { $("status").textContent = text; }

// Float samples from the audio graph -> little-endian 16-bit PCM
function toPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return out.buffer;
}

function stopAudio() {
  if (processor) { processor.disconnect(); processor.onaudioprocess = null; }
  if (source) source.disconnect();
  if (media) media.getTracks().forEach((t) => t.stop());
  if (context) context.close();
  processor = source = media = context = null;
}

async function start() {
  $("start").disabled = true;
  media = await navigator.mediaDevices.getUserMedia({ audio: true });
  context = new AudioContext();
  source = context.createMediaStreamSource(media);
  // ScriptProcessor needs no extra module file; 4096 frames is ~85 ms at 48 kHz
  processor = context.createScriptProcessor(4096, 1, 1);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(scheme + "//" + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify(
      { type: "start", version: 1, sample_rate: context.sampleRate, format: "pcm_s16le" }));
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "ready") {
      setStatus("listening");
      $("stop").disabled = false;
      processor.onaudioprocess = (e) => {
        if (ws && ws.readyState === WebSocket.OPEN)
          ws.send(toPcm16(e.inputBuffer.getChannelData(0)));
      };
      source.connect(processor);
      processor.connect(context.destination);
    } else if (msg.type === "partial") {
      $("partial").textContent = msg.text;
    } else if (msg.type === "final") {
      $("partial").textContent = "";
      if (msg.text) {
        const p = document.createElement("p");
        p.className = "final";
        p.textContent = msg.text;
        $("finals").appendChild(p);
      }
    } else if (msg.type === "done") {
      setStatus("done");
    } else if (msg.type === "error") {
      setStatus("error: " + msg.reason);
    }
  };
  ws.onclose = () => { stopAudio(); $("start").disabled = false; $("stop").disabled = true;
                       if ($("status").textContent === "listening") setStatus("closed"); };
}

function stop() {
  $("stop").disabled = true;
  stopAudio();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  setStatus("finishing");
}

$("start").onclick = () => start().catch((e) => { setStatus("error: " + e); stopAudio(); });
$("stop").onclick = stop;
</script>
</body>
</html>
"""
