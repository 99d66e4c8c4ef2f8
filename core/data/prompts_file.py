"""One reader for the prompts files that pair image names with prompts (an image folder for
`diagnose-dataset`, the RichHF TFRecords' Pick-a-Pic prompts).

Formats, by suffix:

- ``.json``: an object ``{"a.png": "prompt", ...}``;
- ``.jsonl``: one object per line with an image name and a prompt (the keys are the caller's);
- ``.csv``: a header row naming the image and prompt columns;
- anything else (``.tsv``): ``name<TAB>prompt`` lines.

Errors name the file and line and, when the caller gives one, what the file should look like.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence


def read_prompts_file(path: str | Path, name_keys: Sequence[str], prompt_keys: Sequence[str] = ("prompt",),
                      expected: str | None = None) -> dict[str, Any]:
    """``{image name: prompt}`` from a prompts file; the first of ``name_keys`` / ``prompt_keys``
    present in a row (JSONL object or CSV header) is used. ``expected`` is appended to every error."""
    path = Path(path)
    hint = f"; expected {expected}" if expected else ""
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist" + (f"; it should be {expected}" if expected else ""))
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}){hint}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a prompts JSON file must be an object image name -> prompt{hint}")
        return {str(k): v for k, v in data.items()}
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = reader.fieldnames or []
        name_key = next((k for k in name_keys if k in fields), None)
        prompt_key = next((k for k in prompt_keys if k in fields), None)
        if name_key is None or prompt_key is None:
            raise ValueError(f"{path}: the header needs an image column (one of {list(name_keys)}) and a prompt "
                             f"column (one of {list(prompt_keys)}); it has {fields}{hint}")
        return {row[name_key]: row[prompt_key] for row in reader}
    out: dict[str, Any] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc}){hint}") from exc
            obj = obj if isinstance(obj, dict) else {}
            name = next((obj[k] for k in name_keys if obj.get(k) is not None), None)
            prompt_key = next((k for k in prompt_keys if obj.get(k) is not None), None)
            if name is None or prompt_key is None:
                raise ValueError(f"{path}:{lineno}: need an image name (one of {list(name_keys)}) and a prompt "
                                 f"(one of {list(prompt_keys)}){hint}")
            out[str(name)] = obj[prompt_key]
        else:
            if "\t" not in line:
                raise ValueError(f"{path}:{lineno}: expected 'image name<TAB>prompt' (a .json, .jsonl or .csv "
                                 f"file is read by its suffix){hint}")
            name, prompt = line.split("\t", 1)
            out[name] = prompt
    return out
