"""Writes clicks.csv, the example's own data: 12,000 ad impressions with a segment, a category, a
device, a price and an hour, and whether the ad was clicked (a hidden logistic model with an
interaction). Deterministic; run once, the file is committed beside it."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path


def main(path: Path = Path(__file__).with_name("clicks.csv"), rows: int = 12_000) -> None:
    rng = random.Random(7)
    segment_bias = [rng.gauss(0, 0.8) for _ in range(20)]
    category_bias = [rng.gauss(0, 0.8) for _ in range(40)]
    affinity = [[rng.gauss(0, 0.9) for _ in range(40)] for _ in range(20)]
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["segment", "category", "device", "price", "hour", "clicked"])
        for _ in range(rows):
            seg, cat = rng.randrange(20), min(int(rng.paretovariate(1.2)) - 1, 39)
            device = rng.choice(["mobile", "mobile", "desktop", "tablet"])
            price = round(math.exp(rng.gauss(3.0, 0.8)), 2)
            hour = rng.randrange(24)
            logit = (segment_bias[seg] + category_bias[cat] + affinity[seg][cat]
                     - 0.6 * math.log(price) + 0.5 * math.sin(hour / 24 * 2 * math.pi)
                     + (0.4 if device == "mobile" else 0.0) + 0.3)
            clicked = int(rng.random() < 1 / (1 + math.exp(-logit)))
            out.writerow([f"s{seg}", f"c{cat}", device, price, hour, clicked])


if __name__ == "__main__":
    main()
