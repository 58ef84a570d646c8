"""MuJoCo Menagerie robot assets without internet.

Playground's robot tasks (G1, T1, Go1, Panda, ...) ``git clone`` MuJoCo Menagerie into the
installed package on first use, which fails on clusters and CI without internet.  We route around
it, in this order:

1. a user-given Menagerie checkout: the ``menagerie_path=`` argument of ``envs.make`` or the
   ``JAXRL_MENAGERIE_PATH`` environment variable;
2. Playground's own download location, if a previous run already cloned it;
3. a *stand-in* asset folder (in ``~/.cache/jaxrl/menagerie_standin``) in which every mesh file
   the task's XML references is a tiny placeholder tetrahedron.

The stand-in keeps the physics exactly unchanged only when every mesh is visual: it must not
collide (``contype = conaffinity = 0``) and must not carry inertia (its body has an explicit
``<inertial>`` and the compiler does not force inertia from geoms).  Playground's "feetonly" G1
and T1 models satisfy this; `check_standin_physics` verifies it on the loaded model and raises
`MenagerieMissingError` otherwise (Panda, Leap hand, ...), naming the variable to set.
"""

from __future__ import annotations

import os
import re
import struct as _struct
from pathlib import Path

import mujoco

ENV_VAR = "JAXRL_MENAGERIE_PATH"

# Task-name prefix -> Menagerie folders it loads assets from (Playground 0.2).
ROBOT_DIRS: dict[str, tuple[str, ...]] = {
    "Apollo": ("apptronik_apollo",),
    "Barkour": ("google_barkour_vb",),
    "BerkeleyHumanoid": ("berkeley_humanoid",),
    "G1": ("unitree_g1",),
    "Go1": ("unitree_go1",),
    "H1": ("unitree_h1",),
    "Op3": ("robotis_op3",),
    "Spot": ("boston_dynamics_spot",),
    "T1": ("booster_t1",),
    "Aloha": ("aloha",),
    "PandaRobotiq": ("franka_emika_panda", "robotiq_2f85"),
    "Panda": ("franka_emika_panda",),
    "Leap": ("leap_hand",),
    "Aero": ("tetheria_aero_hand_open",),
}


class MenagerieMissingError(RuntimeError):
    """Raised when a task needs the real Menagerie assets and none can be found."""


def robot_dirs(env_name: str) -> tuple[str, ...]:
    """Menagerie folders a Playground task needs; () for tasks that need none."""
    for prefix in sorted(ROBOT_DIRS, key=len, reverse=True):
        if env_name.startswith(prefix):
            return ROBOT_DIRS[prefix]
    return ()


def _playground_default() -> Path:
    from mujoco_playground._src import mjx_env

    return Path(str(mjx_env.MENAGERIE_PATH))


def _set_playground_path(path: Path) -> None:
    from etils import epath
    from mujoco_playground._src import mjx_env

    mjx_env.MENAGERIE_PATH = epath.Path(str(path))


def user_path(menagerie_path: str | os.PathLike | None = None) -> Path | None:
    """The user-given checkout (argument first, then the env var), validated."""
    given = menagerie_path if menagerie_path is not None else os.environ.get(ENV_VAR)
    if not given:
        return None
    path = Path(given).expanduser()
    if not path.is_dir():
        src = "menagerie_path" if menagerie_path is not None else ENV_VAR
        raise MenagerieMissingError(f"{src}={given!s} is not a directory (expected a mujoco_menagerie checkout)")
    return path


def _task_xml_dirs(dirs: tuple[str, ...]) -> list[Path]:
    """Playground's own XML folders that reference the given Menagerie folders."""
    import mujoco_playground

    root = Path(mujoco_playground.__file__).parent / "_src"
    found = []
    for xml in root.rglob("*.xml"):
        text = xml.read_text(errors="ignore")
        if any(f"mujoco_menagerie/{d}/" in text for d in dirs):
            found.append(xml)
    return found


_FILE_RE = re.compile(r'file="([^"]*mujoco_menagerie/([^/"]+)/([^"]+))"')


def _placeholder_stl() -> bytes:
    """A binary STL tetrahedron with 1 mm edges."""
    v = [(0, 0, 0), (1e-3, 0, 0), (0, 1e-3, 0), (0, 0, 1e-3)]
    faces = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
    out = bytearray(b"jaxrl menagerie stand-in".ljust(80, b" "))
    out += _struct.pack("<I", len(faces))
    for f in faces:
        out += _struct.pack("<3f", 0, 0, 0)
        for i in f:
            out += _struct.pack("<3f", *v[i])
        out += b"\0\0"
    return bytes(out)


_PLACEHOLDER_OBJ = b"v 0 0 0\nv 0.001 0 0\nv 0 0.001 0\nv 0 0 0.001\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"


def build_standin(env_name: str, root: Path | None = None) -> Path:
    """Create (or reuse) the stand-in folder for a task; returns the folder to use as Menagerie."""
    dirs = robot_dirs(env_name)
    if root is None:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        root = base / "jaxrl" / "menagerie_standin"
    for xml in _task_xml_dirs(dirs):
        for _, robot, rel in _FILE_RE.findall(xml.read_text(errors="ignore")):
            if robot not in dirs:
                continue
            target = root / robot / rel
            suffix = target.suffix.lower()
            if suffix in (".xml", ".png"):
                # A referenced model file or texture cannot be faked without changing the task.
                raise MenagerieMissingError(missing_message(env_name, f"it loads {robot}/{rel} from Menagerie"))
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(_PLACEHOLDER_OBJ if suffix == ".obj" else _placeholder_stl())
            tmp.replace(target)
    for robot in dirs:
        (root / robot / "assets").mkdir(parents=True, exist_ok=True)
    return root


def missing_message(env_name: str, why: str) -> str:
    return (
        f"{env_name} needs the real MuJoCo Menagerie assets ({why}), and no checkout was found "
        f"(no internet to clone it).  Clone https://github.com/google-deepmind/mujoco_menagerie "
        f"on a machine with access and set {ENV_VAR}=/path/to/mujoco_menagerie, or pass "
        f"envs.make(..., menagerie_path=...)."
    )


def prepare(env_name: str, menagerie_path: str | os.PathLike | None = None) -> str:
    """Point Playground at usable assets for ``env_name``; returns 'user', 'cloned', 'standin' or 'none'."""
    dirs = robot_dirs(env_name)
    if not dirs:
        return "none"
    path = user_path(menagerie_path)
    if path is not None:
        missing = [d for d in dirs if not (path / d).is_dir()]
        if missing:
            raise MenagerieMissingError(f"Menagerie checkout {path} lacks {missing} needed by {env_name}")
        _set_playground_path(path)
        return "user"
    default = _playground_default()
    if all((default / d).is_dir() for d in dirs) and not (default / ".jaxrl_standin").exists():
        return "cloned"
    standin = build_standin(env_name)
    (standin / ".jaxrl_standin").touch()
    _set_playground_path(standin)
    return "standin"


def check_standin_physics(env_name: str, mj_model: mujoco.MjModel, xml_path: str, assets: dict) -> None:
    """Raise unless placeholder meshes leave ``mj_model``'s physics unchanged (see module doc)."""
    spec = _parse_spec(xml_path, assets)
    if spec.compiler.inertiafromgeom == mujoco.mjtInertiaFromGeom.mjINERTIAFROMGEOM_TRUE:
        raise MenagerieMissingError(missing_message(env_name, "its compiler derives inertia from geoms"))
    mesh = mujoco.mjtGeom.mjGEOM_MESH
    for g in range(mj_model.ngeom):
        if mj_model.geom_type[g] != mesh:
            continue
        name = mujoco.mj_id2name(mj_model, mujoco.mjtObj.mjOBJ_GEOM, g) or f"#{g}"
        if mj_model.geom_contype[g] or mj_model.geom_conaffinity[g]:
            raise MenagerieMissingError(missing_message(env_name, f"mesh geom {name} collides"))
        body = spec.bodies[mj_model.geom_bodyid[g]]
        if not body.explicitinertial:
            raise MenagerieMissingError(
                missing_message(env_name, f"mesh geom {name} gives body {body.name!r} its inertia")
            )


def _parse_spec(xml_path: str, assets: dict) -> mujoco.MjSpec:
    """Parse (not compile) the task's XML; includes resolve beside the file, meshes are not read."""
    try:
        return mujoco.MjSpec.from_file(str(xml_path))
    except ValueError:
        return mujoco.MjSpec.from_string(Path(xml_path).read_text(), assets=assets)
