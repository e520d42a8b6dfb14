"""Write the small data files of the lm-eval tasks in this folder (deterministic, no network).

    python examples/lm_eval_tasks/make_data.py          # rewrites data/*.jsonl and data/sentences.txt

The text comes from a tiny sentence grammar (the vocabulary of the test suite's grammar, so the tiny
checkpoints trained on it are in their domain): "<Subject> <verb> <object> <place>." Every file is
a pure function of the seeds below; re-running the script reproduces the committed files byte for byte.

- `data/mc.jsonl` (task `hier_mc`, multiple_choice): a sentence cut before its last word; the
  four choices are place words, exactly one of which the grammar allows after the context
  ("... near the" -> " river."). Fields: context, choices, label.
- `data/gen.jsonl` (task `hier_gen`, generate_until): the same kind of context; the target is the
  only grammatical last word (" river"). Fields: context, target.
- `data/ppl.jsonl` (task `hier_ppl`, loglikelihood_rolling): paragraphs of 4 to 9 sentences
  (about 150 to 450 bytes, so they span several 128-byte windows). Field: text.
- `data/sentences.txt`: 64 sentences, one per line (a sample input for `examples/evaluate_model.py`).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

# the test suite's grammar is the single source of the vocabulary
sys.path.insert(0, str(HERE.parents[1] / "tests"))
from helpers.grammar import OBJECTS, PLACES, SUBJECTS, VERBS  # noqa: E402

# places whose last word is the only one the grammar allows after the words before it
# ("in the" -> park or rain, and "at" -> noon or "the station", are ambiguous, so they are left out)
UNIQUE_ENDINGS = {
    "near the river": ("near the", "river"),
    "every day": ("every", "day"),
    "after dinner": ("after", "dinner"),
    "before school": ("before", "school"),
    "on the hill": ("on the", "hill"),
    "at the station": ("at the", "station"),
    "with a smile": ("with a", "smile"),
}
LAST_WORDS = sorted({p.split()[-1] for p in PLACES})


def sentence(rng: random.Random, places: list[str] = PLACES) -> tuple[str, str]:
    """One sentence and its place phrase."""
    place = rng.choice(places)
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {place}."
    return s[0].upper() + s[1:], place


def cloze(rng: random.Random) -> tuple[str, str]:
    """A sentence cut before its last word, and that word: ("Her sister finds a letter near the", "river")."""
    s, place = sentence(rng, list(UNIQUE_ENDINGS))
    lead, last = UNIQUE_ENDINGS[place]
    head = s[: -len(place) - 1]  # without the place and the final "."
    return f"{head}{lead}", last


def mc_docs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        context, answer = cloze(rng)
        wrong = rng.sample([w for w in LAST_WORDS if w != answer], 3)  # the grammar allows none of them
        choices = [f" {w}." for w in wrong]
        label = rng.randrange(4)
        choices.insert(label, f" {answer}.")
        docs.append({"context": context, "choices": choices, "label": label})
    return docs


def gen_docs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"context": c, "target": f" {w}"} for c, w in (cloze(rng) for _ in range(n))]


def ppl_docs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(sentence(rng)[0] for _ in range(rng.randint(4, 9)))} for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(out: Path = DATA) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "mc.jsonl", mc_docs(40, seed=101))
    write_jsonl(out / "gen.jsonl", gen_docs(40, seed=102))
    write_jsonl(out / "ppl.jsonl", ppl_docs(20, seed=103))
    rng = random.Random(104)
    (out / "sentences.txt").write_text("".join(sentence(rng)[0] + "\n" for _ in range(64)), encoding="utf-8")
    print(f"wrote {sorted(p.name for p in out.iterdir())} under {out}")


if __name__ == "__main__":
    main()
