"""The machine's real database servers for the tests (README: Running the tests)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest
import sqlalchemy as sa

from hpsearch.storage import database_url, mask_url

# The PostgreSQL URL carries a password, which trust authentication ignores, so that the tests can
# check it never reaches the output.
POSTGRES = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql+psycopg2://postgres:s3cret-pw@127.0.0.1:5432/test")
MARIADB = os.environ.get("HPSEARCH_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRED = os.environ.get("HPSEARCH_REQUIRE_SERVICES") == "1"


def require_server(url: str) -> str:
    """``url`` if its server answers; else skip the test, or fail it under HPSEARCH_REQUIRE_SERVICES=1 (CI).

    Takes every URL form hpsearch does (``mysql://`` opens with whichever driver is installed).
    """
    try:
        engine = sa.create_engine(database_url(url), connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # any failure to connect: driver missing, server down
        unavailable(f"database server {mask_url(url)} cannot be reached: {str(exc).splitlines()[0]}")
    return url


def unavailable(message: str) -> NoReturn:
    """Skip the test for want of a service, or fail it under HPSEARCH_REQUIRE_SERVICES=1 (CI never skips)."""
    if REQUIRED:
        pytest.fail(f"{message} (HPSEARCH_REQUIRE_SERVICES=1, so this is an error, not a skip)")
    pytest.skip(message)
