#!/bin/bash
# ../shared/GPU.md's measurements as ONE prepared device call: a lent GPU gives a session about
# 15 minutes, each call at most 10, so the phases run in GPU.md's order and each stops at its share
# of the time, keeping what it measured (gpu_measure.py writes its rows when `timeout` stops it).
#
# Here, once (cp312 wheels of what an offline GPU box lacks, ~40 MiB, into the ignored .whl/):
#     make gpu-wheels
# Then, with the device tool (its $OUT comes back; copy the JSON into experiments/results/):
#     run(command="bash experiments/gpu_session.sh raw,loop 330", carry=[".whl"], timeout_s=390)
#     run(command="bash experiments/gpu_session.sh learn 390", carry=[".whl"], timeout_s=450)
# (15 device minutes hold both with the machine's start.  The learning run compiles its own
# chunk: its budget, not the loop phase's, sets the schedules' lengths, so the second call
# reuses the first's physics programs at most.)  Every row is in the JSON the moment it is
# measured, so a phase cut off mid-compile keeps what came before.
#
# Phases (comma-separated, in this order): raw (MJX env-steps/s, T1 and G1 at 1024/4096/8192 envs),
# loop (FlashSAC paper, SAC lift, PPO paper on T1: throughput, compile, memory), learn (FlashSAC
# paper on T1 for what is left, then export to ONNX and sim2sim in MuJoCo C).
# Dry run on a CPU (tiny sizes, this machine's venv): JAXRL_GPU_SESSION_DRY=1 bash experiments/gpu_session.sh raw,loop,learn 300
set -u
PHASES=${1:-raw,loop,learn}
BUDGET=${2:-480}
START=$(date +%s)
for phase in ${PHASES//,/ }; do
    case $phase in raw|loop|learn) ;; *) echo "unknown phase '$phase': give raw, loop and/or learn, comma-separated"; exit 2;; esac
done
OUTDIR=${OUT:-/tmp/gpu_session}
mkdir -p "$OUTDIR"
export JAXRL_COMPILATION_CACHE=${JAXRL_COMPILATION_CACHE:-/tmp/jaxrl_xla}
PY=${PYTHON:-python3}

left() { echo $((BUDGET - ($(date +%s) - START))); }
# `timeout` with at least 30 s (0 would mean no limit); -k: a kill 20 s after the TERM, since
# Python handles the TERM only between bytecodes (not inside a long XLA compile).
limited() { local s=$1; shift; if [ "$s" -lt 30 ]; then echo "skipped ($s s left): $*"; return 0; fi
            timeout -k 20 "$s" "$@"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    DEPS=/tmp/jaxrl_deps
    [ -f "$DEPS/.done" ] || { "$PY" -m pip install -q --no-index --no-deps --target "$DEPS" .whl/*.whl && touch "$DEPS/.done"; }
    export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import jax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
} | tee "$OUTDIR/device.txt"

if [ -n "${JAXRL_GPU_SESSION_DRY:-}" ]; then  # the same commands at CPU size
    RAW="--tasks CartpoleBalance --num-envs 16 --steps 5"
    LOOP="--task CartpoleBalance --runs flashsac:cpu sac:cpu --seconds 5"
    LEARN="--algo flashsac --preset cpu --task CartpoleBalance --steps 2048 --num-evals 2"
else
    RAW="--tasks T1JoystickFlatTerrain G1JoystickFlatTerrain --num-envs 4096 1024 8192"  # presets' size first
    LOOP="--task T1JoystickFlatTerrain --runs flashsac:paper sac:lift ppo:paper --seconds 45"
    LEARN="--algo flashsac --preset paper --task T1JoystickFlatTerrain --steps 50000000 --num-evals 400"
fi

# Each phase's share of what is left: raw a quarter when others follow; loop half when learn
# follows; learn the rest.  A phase is skipped when under 30 s would be left for it.
case ",$PHASES," in *,raw,*)
    share=$(left); [[ ",$PHASES," == *,loop,* || ",$PHASES," == *,learn,* ]] && share=$(( share / 4 ))
    limited "$share" "$PY" experiments/gpu_measure.py raw $RAW --out "$OUTDIR/gpu_raw.json" 2>&1 | tee "$OUTDIR/raw.log" | tail -n 20
esac
case ",$PHASES," in *,loop,*)
    share=$(left); [[ ",$PHASES," == *,learn,* ]] && share=$(( share / 2 ))
    limited "$share" "$PY" experiments/gpu_measure.py loop $LOOP --raw-json "$OUTDIR/gpu_raw.json" \
        --out "$OUTDIR/gpu_loop.json" 2>&1 | tee "$OUTDIR/loop.log" | tail -n 20
esac
case ",$PHASES," in *,learn,*)
    # Learning stops at the first evaluation after (left - 120 s): export and sim2sim (MuJoCo C on
    # the host CPU) get the last ~2 minutes.
    minutes=$(awk -v s="$(left)" 'BEGIN { m = (s - 120) / 60; printf "%.2f", (m < 0.5 ? 0.5 : m) }')
    limited "$(left)" "$PY" experiments/gpu_measure.py learn $LEARN --minutes "$minutes" --lifecycle \
        --run-dir /tmp/gpu_learn_run --out "$OUTDIR/gpu_learn.json" 2>&1 | tee "$OUTDIR/learn.log" | tail -n 30
esac
echo "phases $PHASES done in $(( $(date +%s) - START )) s of $BUDGET; results in $OUTDIR"
