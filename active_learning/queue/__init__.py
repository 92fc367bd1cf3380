"""The labeling queue: a small web app where labelers transcribe the clips active learning
chose, highest score first.

Modules: config (typed settings), models (tables), db (engine + migrations), auth
(passwords, sessions, who may do what), leases (taking, submitting, skipping and flagging
clips; atomic in the database), transfer (import scored candidates, export labels as a
manifest), stats (progress, per-labeler counts, agreement), app (FastAPI routes and pages),
cli (``python -m active_learning queue ...``).
"""
