#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one run on a CUDA machine, each step under its own time limit, so a
# step that fails or hangs leaves the others' results. From the repository root:
#
#   bash benchmarks/gpu_check.sh OUT_DIR [SECONDS [STEP...]]
#
# SECONDS (optional, 0 for none) is a deadline for the whole run: each step's limit is cut to what is left less
# 15 s (a step is interrupted at its limit, SIGINT, and killed 10 s later), and a step with under 20 s left is
# skipped. STEPs (optional) run only those steps, in the order below whatever the order named. The log's first line
# is the plan: the chosen steps, their limits and which of them the deadline would cut or skip. A wheels/ folder of
# the repository root (made by benchmarks/gpu_wheels.sh), if present, is installed first into /tmp/xdc-site: for
# machines whose Python has torch but not PyAV or faiss.
# Before a lent machine's call, on the CPU machine:
#   1. bash benchmarks/gpu_wheels.sh (the lent H200's Python has neither PyAV nor faiss); name wheels in carry
#   2. bash benchmarks/gpu_check.sh /tmp/dry SECONDS STEP...: it prints the plan, then stops for want of CUDA
#      (exit 1); SECONDS under the call's timeout_s, the call's under the device time left (status)
#   3. python -m pytest tests/test_benchmarks.py tests/test_gpu_check.py: the steps' scripts at tiny sizes
#   4. anything else run there needs the same setup: PYTHONPATH=src:/tmp/xdc-site, after the wheels' install
# Steps, in the order they run (what is not yet known first; padded widths, convs and clustering were measured
# on 2026-11-29, eager and cl before that, see BENCHMARKS.md):
#   env         GPU, driver, CPU cores, model, clock and SIMD extensions (a loader core of the H200 machine made
#               half the items of this project's CPU machine's; benchmarks/simd.py ruled out hidden extensions),
#               any CPU quota, package versions with cuDNN's, a bf16 matrix-product ceiling
#   tests       tests/test_cuda.py: the CUDA path (bf16 + channels-last + padded widths on cuDNN, pinned batches,
#               crops and log-mel on the GPU, a step that does not wait for it, a killed run resumed, k-means
#               searched by torch on the GPU, Sinkhorn balanced on the GPU in one process and over 2 gloo ranks,
#               a pinned loader going on past a dead worker)
#   compile     benchmarks/train_step.py, paper preset, batch 128, bf16, channels-last, middle widths padded to 8
#               and training crops made on the GPU (the trainer's defaults on CUDA), torch.compile (inductor;
#               compiling takes a minute): model-only, end-to-end, loader-only (each after a warm-up of the
#               batches the loader holds in flight), one process, and a profile of 5 model-only steps; then a
#               round's feature extraction (forward only): model-only, end-to-end from its loader, one process,
#               and the last two again from the clips train.extract_cache keeps
#   crops       benchmarks/crops.py: a worker's items per core with the crops, and the log-mel, in the workers or
#               on the GPU, and what the GPU pays per batch of 128 (data.crops_on, data.logmel_on)
#   compiledrun tests/test_cuda.py's compiled run: two rounds of a tiny pretraining with train.compile=true, short
#               batches included, without a recompilation (the condition for compiling by default)
#   s2d         compile's model-only step with the video stem over 2 x 2 pixel blocks (--s2d-stem: the stem's
#               convolution ran at 3% of its roofline), profiled
#   pad64       compile's model-only step with every middle width padded to a multiple of 64 (--pad-widths 64:
#               layer1's 144 channels as 192; cuDNN's tiles of 64 or 128 channels leave a quarter of 144 idle)
#   cudnnall    compile's model-only step with --cudnn-limit 0 (cuDNN's autotuner times every algorithm for each
#               convolution shape, not the 10 its heuristics rank first), profiled
#   cdtune      compile's model-only step with --inductor-tune (coordinate-descent tuning of the Triton kernels'
#               block sizes: the BatchNorm reductions ran at about half the memory bandwidth), profiled
#   cudagraphs  as compile, in mode reduce-overhead (CUDA graphs: the step's kernels replayed with almost no host
#               time, which matters when the loader's workers take every core)
#   convs       benchmarks/conv_shapes.py: every convolution of the encoders alone, forward + backward, against its
#               roofline, as called and as 2-D, pixel-block or channel-padded (to 8 and to 64) equivalents
#   convsall    convs with --cudnn-limit 0 (to conv_shapes_all.json)
#   clustering  benchmarks/clustering.py at 100k and 1M x 512-d, k 256 and 1024, as a round on the GPU runs it with
#               faiss-cpu: PCA and k-means with the torch search, and train.assign=sinkhorn (the same, then the
#               balancing on the GPU); faiss-cpu's own round was measured on 2026-11-29 (path ours)
#   autotune    compile's model-only step in mode max-autotune-no-cudagraphs (Triton templates against cuDNN;
#               over 250 s: it times about 18 kernels for each of 36 convolution shapes)
#   b256        compile's model-only step at batch 256
#   nopad       compile's model-only step without padded widths (--pad-widths 0)
#   eager       as compile, without torch.compile and channels-last
#   cl          as compile, without torch.compile
#   faissthreads  faiss-cpu's round at 1M x 1,024 with 2, 4, 8 and 16 threads (in the log only): with all 16 it
#               was no faster than 2 cores of the CPU machine, for 7-8x their CPU time; what a CPU-only
#               machine with many cores should cap faiss's threads at
# OUT_DIR gets gpu_check.log, profiles.txt, train_step.jsonl (a line per train_step run), conv_shapes.json,
# conv_shapes_all.json, crops.json and clustering.json: 7 files, within the 8 that a lent machine sends back.
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [SECONDS [STEP...]]}
deadline=${2:-0}
only=" ${*:3} "
# a step named in its place (gpu_check.sh OUT tests compile) would be read as the deadline and not run
if ! [[ "$deadline" =~ ^[0-9]+$ ]]; then
    echo "gpu_check.sh: SECONDS '$deadline' is not a whole number of seconds" >&2
    exit 2
fi
known=" env tests compile crops compiledrun s2d pad64 cudnnall cdtune cudagraphs convs convsall clustering "
known+="autotune b256 nopad eager cl faissthreads "
for name in "${@:3}"; do  # a misspelt step would cost a lent machine's call its results, with exit 0
    [[ "$known" == *" $name "* ]] || { echo "gpu_check.sh: no step '$name'; the steps:$known" >&2; exit 2; }
done
out=$(mkdir -p "$out" && cd "$out" && pwd) || exit 1  # absolute: the script changes directory below
exec > >(tee -a "$out/gpu_check.log") 2>&1
cd "$(dirname "$0")/.." || exit 1
failed="" skipped="" planning=1 plan="" planned=0

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, log its exit status and duration
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then
        return 1
    fi
    if [ -n "$planning" ]; then  # the first pass lists the steps that will run, as the deadline would treat them
        if [ "$deadline" -gt 0 ] && [ $((deadline - planned)) -lt 20 ]; then
            plan+=", $name $limit s (skipped if the steps before use their limits)"
        elif [ "$deadline" -gt 0 ] && [ $((deadline - planned - 15)) -lt "$limit" ]; then
            plan+=", $name $limit s (cut to $((deadline - planned - 15)) s if the steps before use their limits)"
        else
            plan+=", $name $limit s"
        fi
        planned=$((planned + limit))
        return 1
    fi
    if [ "$deadline" -gt 0 ]; then
        if [ $((deadline - SECONDS)) -lt 20 ]; then
            echo "=== $name: skipped, $((deadline - SECONDS)) s left of the deadline"
            skipped="$skipped $name"
            return 1
        fi
        # room for --kill-after too: a step that ignores the interrupt still ends by the deadline
        limit=$((limit < deadline - SECONDS - 15 ? limit : deadline - SECONDS - 15))
    fi
    echo "=== $name (limit ${limit} s): $*"
    # SIGINT, not SIGTERM, at the limit: Python then prints where it was, pytest the failures so far and its
    # summary, and the scripts remove their temporary folders; a step killed by SIGTERM left only pytest's "F"s
    timeout -s INT --kill-after=10 "$limit" "$@"
    status=$?
    echo "=== $name: exit $status after $((SECONDS - start)) s"
    [ $status -eq 0 ] || failed="$failed $name"
    return $status
}

train_step() {  # train_step NAME LIMIT FLAGS...: its JSON becomes one line of train_step.jsonl, named NAME
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" python3 benchmarks/train_step.py --preset paper --batch 128 --steps 50 --warmup 10 \
        --loader-steps 100 "$@" &&
        python3 -c 'import json, sys; print(json.dumps({"step": sys.argv[1], **json.load(open(sys.argv[2]))}))' \
            "$name" benchmarks/results/train_step.json >>"$out/train_step.jsonl"
}

steps() {  # every step in its order; one not chosen, or any while planning, returns at once
step env 60 bash -c 'nvidia-smi; nproc; lscpu | grep -E "Model name|MHz|Thread|Socket|Hypervisor"
echo "SIMD: $(grep -m1 "^flags" /proc/cpuinfo | tr " " "\n" | grep -xE "sse4_2|avx|avx2|fma|avx512[a-z_0-9]*" | tr "\n" " ")"
cat /sys/fs/cgroup/cpu.max 2>/dev/null; free -g; df -h /dev/shm /tmp; python3 -c "
import sys, time, torch, torchvision, torchaudio, av, faiss
print(sys.version.split()[0], torch.__version__, torchvision.__version__, torchaudio.__version__, av.__version__,
      faiss.__version__, \"cuDNN\", torch.backends.cudnn.version(), torch.cuda.get_device_name(), \"faiss GPUs:\",
      faiss.get_num_gpus())
a = torch.randn(8192, 8192, device=\"cuda\", dtype=torch.bfloat16)
for _ in range(3): a @ a
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): a @ a
torch.cuda.synchronize()
print(f\"bf16 8192^3 matmul: {10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s\")"'
# after env's diagnostics: the scripts fall back to the CPU without CUDA, where paper-size steps would run until
# their limits (faissthreads alone runs on the CPU)
[ -n "$planning" ] || [[ "$only" =~ ^\ (env\ |faissthreads\ )+$ ]] ||
    python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' || {
    echo "gpu_check.sh: torch sees no CUDA device here (torch.cuda.is_available() is False)"
    exit 1
}
step tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "not compiled_run"
train_step compile 240 --channels-last --compile --profile "$out/profiles.txt"
step crops 120 python3 benchmarks/crops.py --rounds 3 && cp benchmarks/results/crops.json "$out/crops.json"
step compiledrun 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k compiled_run
train_step s2d 150 --channels-last --compile --model-only --s2d-stem --profile "$out/profiles.txt"
train_step pad64 150 --channels-last --compile --model-only --pad-widths 64 --profile "$out/profiles.txt"
train_step cudnnall 180 --channels-last --compile --model-only --cudnn-limit 0 --profile "$out/profiles.txt"
train_step cdtune 240 --channels-last --inductor-tune --model-only --profile "$out/profiles.txt"
train_step cudagraphs 240 --channels-last --compile-mode reduce-overhead
step convs 200 python3 benchmarks/conv_shapes.py && cp benchmarks/results/conv_shapes.json "$out/conv_shapes.json"
step convsall 200 python3 benchmarks/conv_shapes.py --cudnn-limit 0 &&
    cp benchmarks/results/conv_shapes.json "$out/conv_shapes_all.json"
step clustering 180 python3 benchmarks/clustering.py --sizes 100000 1000000 --ks 256 1024 \
    --paths torch sinkhorn-torch && cp benchmarks/results/clustering.json "$out/clustering.json"
train_step autotune 420 --channels-last --compile-mode max-autotune-no-cudagraphs --model-only \
    --profile "$out/profiles.txt"
train_step b256 120 --channels-last --compile --model-only --batch 256
train_step nopad 120 --channels-last --compile --model-only --pad-widths 0
train_step eager 110 --profile "$out/profiles.txt"
train_step cl 90 --channels-last --profile "$out/profiles.txt"
step faissthreads 300 bash -c 'for threads in 2 4 8 16; do
    python3 benchmarks/clustering.py --sizes 1000000 --ks 1024 --paths ours --threads $threads; done'
}

steps
if [ "$deadline" -gt 0 ]; then
    echo "=== plan: ${plan#, }: $planned s of limits, a deadline of $deadline s"
else
    echo "=== plan: ${plan#, }: $planned s of limits, no deadline"
fi
if [ -d wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/xdc-site \
        wheels/*.whl || exit 1
fi
export PYTHONPATH="$PWD/src:/tmp/xdc-site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the steps copy the scripts' JSON from benchmarks/results: one set elsewhere would leave OUT_DIR without them
export XDC_BENCHMARK_RESULTS="$PWD/benchmarks/results"
planning=""
steps
echo "=== done after $SECONDS s${failed:+; failed:$failed}${skipped:+; skipped for the deadline:$skipped}"
[ -z "$failed$skipped" ]
