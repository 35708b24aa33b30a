"""The shape of the house (../shared/DESIGN.md, README "Architecture"): which room may import
which, checked on the source (imports anywhere in a module, also inside functions)."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMS = ("audio", "data", "eval", "losses", "models", "native", "stages", "tasks", "teachers",
         "train")
# room → the jax_asc rooms it must not import
FORBIDDEN = {
    "models": ("data", "train", "stages", "tasks", "eval", "teachers", "losses"),
    "losses": ("data", "train", "stages", "tasks", "eval", "teachers", "models", "audio"),
    "audio": ("data", "train", "stages", "tasks", "eval", "teachers", "models", "losses"),
    "native": ("data", "train", "stages", "tasks", "eval", "teachers", "models", "losses",
               "audio"),
    "data": ("models", "train", "stages", "tasks", "teachers", "losses", "eval"),
    "train": ("data", "stages", "tasks", "teachers", "models", "losses", "audio", "eval"),
    "eval": ("stages", "tasks", "teachers", "train", "data"),
    "teachers": ("stages", "tasks", "data", "eval", "losses"),
    "tasks": ("stages", "data"),
}


def _imports(path):
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f"{node.module}.{a.name}" for a in node.names)


def _room_of(module):
  parts = module.split(".")
  if parts[0] == "jax_asc" and len(parts) > 1 and parts[1] in ROOMS:
    return parts[1]
  return None


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_only_what_it_may(room):
  folder = os.path.join(REPO, "jax_asc", room)
  for dirpath, _, names in os.walk(folder):
    for name in names:
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      for module in _imports(path):
        assert _room_of(module) not in FORBIDDEN[room], (
            f"{os.path.relpath(path, REPO)} imports {module}: the {room} room may not import "
            f"jax_asc.{_room_of(module)}")
