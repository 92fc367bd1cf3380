"""What the admin page shows: progress, per-labeler counts, agreement on clips labeled
more than once."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List, Optional

from sqlalchemy import and_, case, false, func, select, true
from sqlalchemy.orm import Session

from active_learning.queue.models import Clip, Label, User
from active_learning.queue.transfer import normalize


def word_edit_distance(a: List[str], b: List[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def progress(db: Session, now: Optional[float] = None) -> Dict[str, int]:
    now = time.time() if now is None else now
    c = Clip
    row = db.execute(select(
        func.count(c.id),
        func.coalesce(func.sum(case((and_(c.flagged == false(), c.labels_done >= c.labels_wanted), 1), else_=0)), 0),
        func.coalesce(func.sum(case((c.flagged == true(), 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(c.lease_user_id.is_not(None), c.lease_expires_at >= now,
                                          c.labels_done < c.labels_wanted, c.flagged == false()), 1), else_=0)), 0),
        func.coalesce(func.sum(case((c.flagged == false(), c.labels_wanted - c.labels_done), else_=0)), 0),
    )).one()
    clips, complete, flagged, leased, labels_left = (int(v) for v in row)
    return {"clips": clips, "complete": complete, "flagged": flagged,
            "remaining": clips - complete - flagged, "leased_now": leased, "labels_left": labels_left}


def per_labeler(db: Session) -> List[Dict]:
    counts = {a: func.coalesce(func.sum(case((Label.action == a, 1), else_=0)), 0) for a in ("label", "skip", "flag")}
    rows = db.execute(select(User.name, User.role, counts["label"], counts["skip"], counts["flag"],
                             func.max(Label.created_at))
                      .outerjoin(Label, Label.user_id == User.id).group_by(User.id, User.name, User.role)
                      .order_by(User.name)).all()
    return [{"name": n, "role": r, "labels": int(l), "skips": int(s), "flags": int(f), "last_at": last}
            for n, r, l, s, f, last in rows]


def agreement(db: Session) -> Dict:
    """Over clips with two or more transcripts, comparing the first two: the share that
    match exactly (after case and spacing) and the mean word error rate of the second
    against the first."""
    texts = defaultdict(list)
    for clip_id, text in db.execute(select(Label.clip_id, Label.text).where(Label.action == "label")
                                    .order_by(Label.created_at, Label.id)):
        texts[clip_id].append(normalize(text or ""))
    pairs = [t[:2] for t in texts.values() if len(t) >= 2]
    if not pairs:
        return {"clips_labeled_twice": 0, "exact_agreement": None, "mean_wer": None}
    wers = [word_edit_distance(a.split(), b.split()) / max(len(a.split()), 1) for a, b in pairs]
    return {"clips_labeled_twice": len(pairs),
            "exact_agreement": sum(a == b for a, b in pairs) / len(pairs),
            "mean_wer": sum(wers) / len(wers)}


def queue_stats(db: Session) -> Dict:
    return {"progress": progress(db), "labelers": per_labeler(db), "agreement": agreement(db)}
