"""`make demo`: the embedded default job, on CPU in a few minutes.

Until a trainer is selected with ``--algo``, runs a random-policy rollout on CartpoleBalance and
writes ``summary.json``; with ``--algo flashsac`` (the default once available) it trains, writes a
checkpoint, a learning-curve PNG and an exported policy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

import envs


def random_rollout(env_name: str, num_envs: int, steps: int, out: Path) -> dict:
    env = envs.make(env_name, num_envs=num_envs)

    @jax.jit
    def run(state, key):
        def body(s, k):
            return env.step(s, env.random_action_fn(k)), ()

        return jax.lax.scan(body, state, jax.random.split(key, steps))[0]

    t0 = time.perf_counter()
    state = jax.block_until_ready(run(env.reset(), jax.random.PRNGKey(0)))
    wall = time.perf_counter() - t0
    done = int(state.stats.completed)
    summary = {
        "job": "random_rollout",
        "env": env_name,
        "num_envs": num_envs,
        "env_steps": num_envs * steps,
        "episodes_completed": done,
        "mean_episode_return": float(state.stats.return_sum) / max(done, 1),
        "wall_s_including_compile": wall,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--env", default="CartpoleBalance")
    a = p.parse_args(argv)
    print(json.dumps(random_rollout(a.env, 16, 2000, Path(a.out)), indent=1))


if __name__ == "__main__":
    main()
