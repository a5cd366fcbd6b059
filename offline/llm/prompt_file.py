"""Versioned prompt files: the output of ``llmhyper optimize-prompt``, the input of ``--prompt``.

A prompt file is a JSON object::

    {"format": "llmhyper-prompt-file", "format_version": 1,
     "version": "llmhyper-prompt-v1+<12 hex>",     # what the manifest and the cache keys record
     "name": "<variant name>", "instruction": "<one extra criterion>", "shots": 3,
     "search": {...}}                              # optional: how it was chosen (scores per variant)

``instruction`` is appended as one more criterion of the weight prompt (outside the data blocks:
it is our text, not an advertiser's) and ``shots`` sets the reference ads shown. ``version`` is
derived from (instruction, shots), so two files that prompt alike share cached answers and two
that differ never do; a file whose version does not match its content is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline.data.cache import atomic_write_bytes, content_hash
from offline.llm.prompts import PROMPT_VERSION

FORMAT = "llmhyper-prompt-file"
FORMAT_VERSION = 1
INSTRUCTION_CAP = 2000

__all__ = ["PromptFile", "load_prompt_file", "INSTRUCTION_VARIANTS"]

# The instruction variants optimize-prompt searches (our own wording). "base" adds nothing.
INSTRUCTION_VARIANTS: dict[str, str] = {
    "base": "",
    "anchor": ("Anchoring: when the most similar reference ads agree on a feature's sign, keep that sign "
               "unless the target ad's content clearly contradicts it, and stay within their range."),
    "content-first": ("Content first: decide each feature's direction from the target ad's own content and the "
                      "feature definition before looking at the reference numbers; use the references for scale."),
    "sparse": ("Sparsity: most features matter little for any single ad; keep weights of features without a "
               "clear link to this ad near 0 and spend magnitude on the few that are decisive."),
}


def prompt_version(instruction: str, shots: int) -> str:
    """The version string of a prompt with this extra instruction and shot count."""
    return f"{PROMPT_VERSION}+{content_hash('prompt-file-v1', instruction, str(int(shots)))[:12]}"


@dataclass
class PromptFile:
    """A loaded prompt file (see the module docstring)."""

    name: str
    instruction: str
    shots: int
    search: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or len(self.instruction) > INSTRUCTION_CAP:
            raise ValueError(f"prompt file instruction must be a string of at most {INSTRUCTION_CAP} characters")
        if "<<<" in self.instruction or ">>>" in self.instruction:
            raise ValueError("prompt file instruction must not contain data-block markers <<< or >>>")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or not 0 <= self.shots <= 50:
            raise ValueError(f"prompt file shots must be an integer in 0..50, got {self.shots!r}")

    @property
    def version(self) -> str:
        return prompt_version(self.instruction, self.shots)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version, "name": self.name,
                "instruction": self.instruction, "shots": self.shots, "search": self.search}

    def save(self, path: str | Path) -> Path:
        """Write the file atomically; returns its path."""
        p = Path(path)
        atomic_write_bytes(p, (json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_nan_free) + "\n")
                           .encode("utf-8"))
        return p

    def manifest_entry(self) -> dict[str, Any]:
        """What a build's manifest records about the prompt file used."""
        return {"path": self.path, "version": self.version, "name": self.name, "shots": self.shots}


def _nan_free(o: Any) -> Any:
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def load_prompt_file(path: str | Path) -> PromptFile:
    """Read and check a prompt file; ValueError naming the file and the problem."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"prompt file {p} does not exist") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"prompt file {p} is not readable JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"prompt file {p}: 'format' must be {FORMAT!r}")
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"prompt file {p}: format_version {d.get('format_version')!r} is not {FORMAT_VERSION}")
    unknown = sorted(set(d) - {"format", "format_version", "version", "name", "instruction", "shots", "search"})
    if unknown:
        raise ValueError(f"prompt file {p}: unknown key(s) {unknown}")
    try:
        pf = PromptFile(name=str(d.get("name", p.stem)), instruction=d.get("instruction", ""),
                        shots=d.get("shots", 5), search=d.get("search") or {}, path=str(p))
    except ValueError as e:
        raise ValueError(f"prompt file {p}: {e}") from None
    if "version" in d and d["version"] != pf.version:
        raise ValueError(f"prompt file {p}: version {d['version']!r} does not match its content ({pf.version}); "
                         "it was edited by hand -- remove 'version' or re-run optimize-prompt")
    return pf


def finite_or_none(x: float) -> float | None:
    """JSON-safe float (NaN/inf -> None) for the search table."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None
