"""The environment a user's shell has: none of the variables that steer libguestfs.

Tests that set LIBGUESTFS_BACKEND or LIBGUESTFS_BACKEND_SETTINGS take a path no user
takes (a fresh machine hung for 22 minutes on the one users take). Commands run by the
end-to-end tests get this environment, so they take the default path."""

from __future__ import annotations

import os


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBGUESTFS_")}
    env.update(extra)
    return env
