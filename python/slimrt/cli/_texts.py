"""Reading the text files commands take (--calibration, --data, --eval-data, --distill-data)."""

from __future__ import annotations

import json


def _read_texts(path: str, flag: str = "--data") -> list[str]:
    """Texts for calibration, evaluation or distillation: one per non-empty line of a text file, or a
    .jsonl whose lines are JSON strings or {"text": ...} objects. ``flag`` names the option in errors."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{flag} {path}: line {i} is not JSON ({e.msg})") from None
                line = item.get("text") if isinstance(item, dict) else item
                if not isinstance(line, str) or not line:
                    raise ValueError(f"{flag} {path}: line {i} is neither a string nor an object with \"text\"")
            texts.append(line)
    if not texts:
        raise ValueError(f"{flag} {path} holds no text")
    return texts


def _read_calibration(path: str, batch_size: int = 8) -> list[list[str]]:
    """Calibration texts (see _read_texts) in batches of batch_size."""
    texts = _read_texts(path, flag="--calibration")
    return [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
