"""A tiny generative grammar: sentences for training and held-out tests of the autoencoder."""

import random

SUBJECTS = [
    "the cat",
    "a dog",
    "my friend",
    "the old man",
    "her sister",
    "a small bird",
    "the teacher",
    "our neighbour",
    "the farmer",
    "a young girl",
    "his brother",
    "the baker",
]
VERBS = ["sees", "likes", "finds", "chases", "paints", "helps", "calls", "follows", "meets", "watches"]
OBJECTS = [
    "the ball",
    "a red car",
    "the river",
    "an apple",
    "the blue door",
    "a letter",
    "the garden",
    "a tall tree",
    "the window",
    "a wooden box",
    "the market",
    "a green hat",
]
PLACES = [
    "in the park",
    "at noon",
    "near the river",
    "every day",
    "after dinner",
    "before school",
    "on the hill",
    "in the rain",
    "at the station",
    "with a smile",
]


def sentence(rng: random.Random) -> str:
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
    return s[0].upper() + s[1:]


def sentences(n: int, seed: int, exclude: set[str] | frozenset = frozenset()) -> list[str]:
    """`n` distinct sentences not in `exclude`, deterministic for a seed."""
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        s = sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
