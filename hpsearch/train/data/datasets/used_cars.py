"""``used_cars``: a deterministic synthetic used-car price table, vectorized for millions of rows.

Price = the brand's new price, scaled by engine size, fuel and transmission, depreciated by age
(a first-year drop, then a yearly rate that depends on the brand) and by mileage, times log-normal noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("brand", "model_year", "mileage", "engine_size", "fuel", "transmission", "price")
REFERENCE_YEAR = 2025

# brand: (new price in USD, yearly depreciation, typical engine size in litres)
_BRANDS = {
    "Dacia": (17_000, 0.12, 1.2),
    "Kia": (24_000, 0.11, 1.6),
    "Toyota": (30_000, 0.08, 1.8),
    "Honda": (29_000, 0.085, 1.8),
    "Ford": (28_000, 0.13, 2.0),
    "Volkswagen": (31_000, 0.11, 1.8),
    "Subaru": (32_000, 0.09, 2.2),
    "Volvo": (45_000, 0.13, 2.0),
    "BMW": (55_000, 0.15, 2.5),
    "Mercedes": (60_000, 0.15, 2.5),
    "Porsche": (95_000, 0.08, 3.2),
}
_FUELS = {"petrol": (0.55, 1.0), "diesel": (0.25, 1.05), "hybrid": (0.13, 1.15), "electric": (0.07, 1.3)}
_TRANSMISSIONS = {"manual": (0.35, 0.95), "automatic": (0.65, 1.0)}


def used_cars(rows: int, seed: int) -> pd.DataFrame:
    """``rows`` cars with the columns in ``COLUMNS``; the same ``rows`` and ``seed`` give the same table."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    names = np.array(list(_BRANDS))
    new_price, yearly, litres = (np.array([v[i] for v in _BRANDS.values()]) for i in range(3))
    brand = rng.integers(0, len(names), rows)
    age = np.minimum(rng.gamma(2.0, 3.0, rows), 20).astype(np.int64)
    mileage = np.round(age * rng.lognormal(np.log(12_000), 0.35, rows) + rng.uniform(0, 3_000, rows), -1)
    engine = np.round(np.clip(litres[brand] * rng.lognormal(0.0, 0.2, rows), 0.9, 6.5), 1)
    fuel_names, fuel = _draw(_FUELS, rng, rows)
    gear_names, gear = _draw(_TRANSMISSIONS, rng, rows)
    engine[fuel_names[fuel] == "electric"] = 0.0  # an electric car has no combustion engine
    fuel_factor = np.array([v[1] for v in _FUELS.values()])[fuel]
    gear_factor = np.array([v[1] for v in _TRANSMISSIONS.values()])[gear]
    size_factor = 1.0 + 0.12 * (np.where(engine > 0, engine, litres[brand]) - litres[brand])
    value = new_price[brand] * size_factor * fuel_factor * gear_factor
    value *= np.where(age > 0, 0.85, 1.0) * (1.0 - yearly[brand]) ** age  # the first year costs the most
    value *= np.exp(-mileage / 250_000)
    price = np.round(np.maximum(value * rng.lognormal(0.0, 0.08, rows), 500.0), -1)
    return pd.DataFrame(
        {
            "brand": names[brand],
            "model_year": REFERENCE_YEAR - age,
            "mileage": mileage.astype(np.int64),
            "engine_size": engine,
            "fuel": fuel_names[fuel],
            "transmission": gear_names[gear],
            "price": price,
        }
    )


def _draw(table: dict[str, tuple[float, float]], rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    names = np.array(list(table))
    weights = np.array([v[0] for v in table.values()])
    return names, rng.choice(len(names), rows, p=weights / weights.sum())
