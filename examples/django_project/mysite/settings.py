"""Settings of the example project. ``EXAMPLE_DB=postgres`` runs it on PostgreSQL (the
loopback test server), anything else on a SQLite file; ``EXAMPLE_DB_NAME`` names the
database (the test runner creates ``test_<name>``)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["conveyor.contrib.django", "shop"]
NAME = os.environ.get("EXAMPLE_DB_NAME", "conveyor_example")

if os.environ.get("EXAMPLE_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": NAME,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
        }
    }
else:
    folder = Path(os.environ.get("EXAMPLE_DB_DIR", BASE_DIR))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(folder / f"{NAME}.sqlite3"),
            # A file, not Django's in-memory test database: workers open it too.
            "TEST": {"NAME": str(folder / f"test_{NAME}.sqlite3")},
        }
    }

CONVEYOR = {"APP": "mysite.tasks:app"}
