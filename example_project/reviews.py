"""A few hundred realistic product reviews, made offline and deterministically.

The demo needs data that looks like a real classification job without downloading anything.
"""

from __future__ import annotations

import random

PRODUCTS = [
    "wireless earbuds",
    "espresso machine",
    "trail running shoes",
    "mechanical keyboard",
    "air fryer",
    "standing desk",
    "e-reader",
    "robot vacuum",
    "camping tent",
    "electric toothbrush",
    "noise-cancelling headphones",
    "cast iron skillet",
]

POSITIVE = [
    "I use the {p} every day and it still works like new. Worth every penny.",
    "Honestly the best {p} I have owned. Setup took five minutes.",
    "Bought the {p} as a gift and ended up ordering a second one for myself.",
    "Great build quality, and support answered my question within an hour. Love this {p}.",
    "The {p} exceeded my expectations; battery life and comfort are excellent.",
]
NEGATIVE = [
    "The {p} stopped working after two weeks and the refund took a month.",
    "Cheap materials. My {p} arrived scratched and one part was missing.",
    "I regret buying this {p}: loud, slow and the app keeps crashing.",
    "Returned the {p}. It overheated twice and smelled like burning plastic.",
    "Do not buy this {p}. The description promised features it simply does not have.",
]
NEUTRAL = [
    "The {p} does what it says. Nothing special, nothing wrong.",
    "It is an average {p}. Fine for the price, but I expected a bit more.",
    "Delivery was on time. The {p} works, although the manual is confusing.",
    "Mixed feelings about the {p}: good design, mediocre performance.",
]


def make_reviews(n: int = 300, *, seed: int = 7) -> list[dict[str, object]]:
    """Return ``n`` review rows: ``review_id``, ``product``, ``rating``, ``review``."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        product = rng.choice(PRODUCTS)
        kind = rng.choices(["pos", "neg", "neu"], weights=[5, 3, 2])[0]
        templates, ratings = {
            "pos": (POSITIVE, [4, 5]),
            "neg": (NEGATIVE, [1, 2]),
            "neu": (NEUTRAL, [3]),
        }[kind]
        rows.append(
            {
                "review_id": f"rev-{i:05d}",
                "product": product,
                "rating": rng.choice(ratings),
                "review": rng.choice(templates).format(p=product),
            }
        )
    return rows
