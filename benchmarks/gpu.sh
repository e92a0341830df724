#!/usr/bin/env bash
# The GPU checks of the performance work, in phases sized for a short lease of one GPU:
#
#   bash benchmarks/gpu.sh setup                  CIFAR-10 into /tmp/c10 (from .devsite/ or $CIFAR_TARS), versions
#   bash benchmarks/gpu.sh study-start            train the ShiftViT study's missing runs, detached (setsid)
#   bash benchmarks/gpu.sh warm                   fill torch.compile's caches for the timed phase, several at once
#   bash benchmarks/gpu.sh study-wait OUT SECS    wait up to SECS for the study; pack its folder into OUT/study.tgz
#   bash benchmarks/gpu.sh study-stop             stop the study (its finished runs are kept; a rerun resumes)
#   bash benchmarks/gpu.sh bench OUT              the timed benchmarks, one at a time; OUT/bench.tgz after each
#
# The study does no timing that is reported as a benchmark, so it may share the machine with
# the compile warm-up; nothing is timed while it runs: `bench` refuses to start beside it
# (on 2026-12-04 a bench timed beside three training runs gave ratios from 0.35 to 8.4).
# PYTHON picks the interpreter (python3).
set -u
PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
STUDY_OUT=/tmp/study_shiftvit
BENCH=/tmp/bench
stamp() { echo "== $* ($(date -u +%T))"; }

case "${1:-}" in
setup)
    tars=${CIFAR_TARS:-.devsite}
    if [ ! -d /tmp/c10/test ]; then
        mkdir -p /tmp/c10
        for t in "$tars"/cifar10-train.tar.gz "$tars"/cifar10-test.tar.gz; do tar -xzf "$t" -C /tmp/c10 || exit 1; done
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, timm, fvcore, ptflops; print('torch', torch.__version__, 'timm', timm.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    nproc
    ;;
study-start)
    rm -rf "$STUDY_OUT" && cp -r results/studies/shiftvit "$STUDY_OUT"
    # the runs already there were trained with archbench 0.1's init: the missing ones must match
    setsid nohup $PY -m archbench study shiftvit --dataset imagefolder --data-dir /tmp/c10 \
        --sections mixer,mlp_ratio --jobs 8 --device cuda --init archbench-0.1 --out "$STUDY_OUT" \
        >/tmp/study.log 2>&1 </dev/null &
    echo $! >/tmp/study.pid
    stamp "study started, pid $(cat /tmp/study.pid)"
    ;;
warm)
    stamp warm-up
    for m in deit_small crossvit_15 volo_d1; do
        $PY benchmarks/vs_timm.py --device cuda --batch-size 256 --amp bf16 --compile --warm-only --models $m \
            >/tmp/warm_$m.log 2>&1 &
    done
    for b in 8 128; do
        $PY benchmarks/shift.py --device cuda --compiled --batch-size $b --rounds 1 --block-ms 0.1 \
            --out /tmp/warm_shift$b >/tmp/warm_shift$b.log 2>&1 &
    done
    wait
    grep -h "warm-up\|Error\|error" /tmp/warm_*.log | tail -20
    stamp warm-up done
    ;;
study-wait)
    out=$2; limit=$3; t0=$(date +%s)
    while kill -0 "$(cat /tmp/study.pid)" 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt "$limit" ]; do sleep 5; done
    if kill -0 "$(cat /tmp/study.pid)" 2>/dev/null; then stamp "study still running"; else stamp "study ended"; fi
    tail -c 3000 /tmp/study.log
    cp /tmp/study.log "$out/study.log"
    tar -czf "$out/study.tgz" -C /tmp "$(basename "$STUDY_OUT")"
    ;;
study-stop)
    kill -- -"$(cat /tmp/study.pid)" 2>/dev/null && stamp "study stopped"
    ;;
bench)
    out=$2; mkdir -p $BENCH
    if [ -f /tmp/study.pid ] && kill -0 "$(cat /tmp/study.pid)" 2>/dev/null; then
        echo "gpu.sh bench: the study (pid $(cat /tmp/study.pid)) still trains on this GPU; timings beside it" \
             "would be worthless: wait (study-wait) or stop it (study-stop) first" >&2
        exit 2
    fi
    pack() { cp /tmp/bench.log "$out/bench.log" 2>/dev/null; tar -czf "$out/bench.tgz" -C /tmp bench; }
    {
        for b in 8 128; do
            stamp "shift batch $b"
            timeout 120 $PY benchmarks/shift.py --device cuda --compiled --batch-size $b --rounds 21 --block-ms 2 \
                --out $BENCH/shift_cuda_b$b
            pack
        done
        stamp "vs timm, bf16, compiled, batch 256"
        timeout 240 $PY benchmarks/vs_timm.py --device cuda --batch-size 256 --amp bf16 --compile --rounds 8 \
            --iters 10 --out $BENCH/vs_timm_bf16_compiled
        pack
        stamp "vs timm, bf16, eager, batch 256"
        timeout 90 $PY benchmarks/vs_timm.py --device cuda --batch-size 256 --amp bf16 --rounds 8 --iters 10 \
            --out $BENCH/vs_timm_bf16_eager
        pack
        stamp "scale"
        timeout 180 $PY -m archbench scale --mixers all --img-sizes 112,160,224,320,448 --batch-size 64 --repeats 10 \
            --device cuda --out $BENCH/scale_cuda
        stamp done
    } 2>&1 | tee /tmp/bench.log
    pack
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh setup|study-start|warm|study-wait OUT SECS|study-stop|bench OUT" >&2
    exit 2
    ;;
esac
