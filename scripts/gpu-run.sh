#!/usr/bin/env bash
# Runs on a GPU machine from the repository root, after scripts/gpu-bundle.sh ran here and
# target/gpu-bundle was carried there. Logs go to $OUT (default /tmp/fused-rnn-gpu); a summary
# table is printed last.
#   tests     every test binary with FUSED_RNN_REQUIRE_GPU=1 (a skip fails)
#   memcheck  compute-sanitizer memcheck on the CUDA tests
#   bench     criterion fused vs naive, then PyTorch (cuDNN) at the same sizes
#   torch     fresh PyTorch RNN, LSTM, GRU and attention cases through `fused-rnn run --device cuda`,
#             forward and (--grad) gradients against float64 autograd
#   bench-attention-backward  attention backward fused vs naive, then PyTorch autograd
#   bench-training  forward + backward on CUDA, fused vs naive, then PyTorch (cuDNN) training
#   bench-decoder  the attention decoder's training step and greedy decoding, fused vs naive,
#             then PyTorch's eager loop of the same model (scripts/torch_decoder_bench.py)
#   persistent-variants  the persistent tests under each FUSED_RNN_PERSISTENT variant of
#             $PERSISTENT_VARIANTS (default: W_hh in registers, h staged by 16-byte loads and
#             the input side prefetched; registers alone; staging and prefetch alone; all three
#             mostly in shared memory past a 48-register budget), racecheck on the small shapes,
#             and the persistent bench of each
#   caption   the captioning demo on the GPU (the bundled captioner on the 1,000 test scenes,
#             with its report), captioning throughput on 10,000 scenes (greedy f32 and bf16, beam
#             3; the CPU's greedy beside them), and captioners trained from scratch for 60 s on
#             the GPU (the bundled recipe, batch 16 and 64) read on the test scenes;
#             CAPTION_DEVICE=cpu runs the same part on the CPU, as a dry run
# MEMCHECK_TESTS and MEMCHECK_BLOCKS narrow the memcheck part to some test binaries.
# PARTS (default "tests memcheck torch bench-recurrent bench-persistent bench-attention") picks
# what runs.
set -uo pipefail
parts=" ${PARTS:-tests memcheck torch bench-recurrent bench-persistent bench-attention} "
want() { [[ $parts == *" $1 "* ]]; }
bundle=target/gpu-bundle/bin
out=${OUT:-/tmp/fused-rnn-gpu}
mkdir -p "$out"
export FUSED_RNN_REQUIRE_GPU=1 FUSED_RNN_REQUIRE_NVRTC=1
# The persistent kernels gpu-bundle.sh precompiled, unpacked into the disk cache (on another
# GPU or NVRTC version their keys do not match, and they compile here as usual).
if [[ -f target/gpu-bundle/jit-cache.tar.gz ]]; then
    export FUSED_RNN_CACHE_DIR=${FUSED_RNN_CACHE_DIR:-/tmp/fused-rnn-jit}
    mkdir -p "$FUSED_RNN_CACHE_DIR"
    tar xzf target/gpu-bundle/jit-cache.tar.gz -C "$FUSED_RNN_CACHE_DIR"
fi
# Prefer the pip wheels of the machine's PyTorch (under /opt): the same NVRTC 13.0 build as
# scripts/install-nvrtc.sh installs here.
lib_dirs=""
for lib in libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13; do
    found=$(find /opt /usr/local/cuda/ /usr/lib -name "$lib" 2>/dev/null | head -1)
    [ -n "$found" ] && lib_dirs="$lib_dirs:$(dirname "$found")"
done
export LD_LIBRARY_PATH="${lib_dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$PATH:/usr/local/cuda/bin"
export FUSED_RNN_BIN="$bundle/fused-rnn"
nvrtc_lib=$(find /opt -name libnvrtc.so.13 2>/dev/null | head -1)
[ -n "$nvrtc_lib" ] && export FUSED_RNN_NVRTC_DIR="$(dirname "$nvrtc_lib")"
summary=()
record() { summary+=("$(printf '%-34s %s' "$1" "$2")"); }
step() { # name, log, limit (s), command...
    local name=$1 log=$2 limit=$3; shift 3
    local start=$SECONDS
    echo "=== $name: $*" >>"$log"
    if timeout "$limit" "$@" >>"$log" 2>&1; then record "$name" "PASS ($((SECONDS - start)) s)"
    else record "$name" "FAIL rc=$? ($((SECONDS - start)) s, see $(basename "$log"))"; fi
}

{ nvidia-smi; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } >"$out/machine.log" 2>&1
step "info" "$out/machine.log" 60 "$bundle/fused-rnn" info
step "demo" "$out/machine.log" 60 "$bundle/fused-rnn" demo
if want tests; then
    for t in "$bundle"/test-*; do
        # NVRTC compiles and spill checks need no GPU: CI runs them (with the NVRTC that
        # scripts/install-nvrtc.sh pins); here recurrent_cuda's loaded_kernels_use_no_local_memory
        # asks the driver instead. Nor do the host builds of the kernels.
        case "$(basename "$t")" in
            test-kernels_compile | test-kernels_on_host) continue ;;
        esac
        step "$(basename "$t")" "$out/tests.log" 150 "$t" --test-threads=1 --nocapture
    done
fi
if want memcheck; then
    # recurrent_cuda's small rows cover every feature; the large ones only add sanitizer time.
    for t in ${MEMCHECK_TESTS:-recurrent_cuda attention_cuda train_cuda tensor_device decoder_cuda}; do
        step "memcheck test-$t" "$out/sanitizer.log" 300 env FUSED_RNN_TEST_MAX_HIDDEN=33 \
            compute-sanitizer --tool memcheck --error-exitcode 1 "$bundle/test-$t" --test-threads=1
    done
    # The building blocks' CUDA tests (their names hold "cuda"; the rest run on the host).
    for t in ${MEMCHECK_BLOCKS:-blocks_linear blocks_pointwise blocks_reduce blocks_dropout blocks_shape blocks_select}; do
        step "memcheck test-$t" "$out/sanitizer.log" 200 \
            compute-sanitizer --tool memcheck --error-exitcode 1 "$bundle/test-$t" --test-threads=1 cuda
    done
    # Shared-memory races in the persistent kernel (a small GRU, picked by Auto).
    step "racecheck persistent" "$out/sanitizer.log" 200 \
        compute-sanitizer --tool racecheck --error-exitcode 1 "$bundle/test-recurrent_cuda" \
        --test-threads=1 auto_picks_persistent
fi
if want persistent-variants; then
    test=fused_naive_and_persistent_match_cpu_for_every_cell_and_dtype
    variants=${PERSISTENT_VARIANTS:-regs,vec,prefetch regs vec,prefetch regs=48,vec,prefetch}
    for v in $variants; do
        step "persistent tests [$v]" "$out/tests.log" 150 env FUSED_RNN_TEST_ALGOS=persistent \
            FUSED_RNN_PERSISTENT=$v "$bundle/test-recurrent_cuda" --test-threads=1 "$test"
    done
    for v in mma $variants; do
        step "racecheck persistent [$v] H<=33" "$out/sanitizer.log" 150 env \
            FUSED_RNN_TEST_ALGOS=persistent FUSED_RNN_TEST_MAX_HIDDEN=33 FUSED_RNN_PERSISTENT=$v \
            compute-sanitizer --tool racecheck --error-exitcode 1 "$bundle/test-recurrent_cuda" \
            --test-threads=1 "$test"
    done
    # The default runs in bench-persistent.
    for v in $variants; do
        step "bench persistent [$v]" "$out/bench.log" 120 env FUSED_RNN_PERSISTENT=$v \
            "$bundle/bench-recurrent" --bench --noplot "persistent_forward.*/persistent_"
    done
fi
if want torch; then
    step "fresh torch cases, cuda f32" "$out/torch.log" 150 \
        python3 scripts/check_against_torch.py --bin "$bundle/fused-rnn" --device cuda \
        --kinds rnn,lstm,gru,attention --count 8 --tol 1e-4
    step "fresh torch gradients, cuda f32" "$out/torch.log" 150 \
        python3 scripts/check_against_torch.py --bin "$bundle/fused-rnn" --device cuda \
        --kinds rnn,lstm,gru,attention --count 6 --tol 1e-4 --grad
    step "fresh torch decoder cases, cuda f32" "$out/torch.log" 150 \
        python3 scripts/check_decoder_against_torch.py --bin "$bundle/fused-rnn" --device cuda \
        --count 8 --tol 1e-4
fi
if want bench-recurrent; then
    step "bench recurrent fused vs naive" "$out/bench.log" 200 "$bundle/bench-recurrent" --bench --noplot
    step "bench recurrent torch cuDNN" "$out/bench.log" 120 \
        python3 scripts/torch_gpu_bench.py --json "$out/torch_bench.json"
fi
if want bench-persistent; then
    step "bench persistent vs stepwise" "$out/bench.log" 200 \
        "$bundle/bench-recurrent" --bench --noplot persistent_forward
    step "bench persistent torch cuDNN" "$out/bench.log" 120 \
        python3 scripts/torch_gpu_bench.py --persistent --json "$out/torch_persistent.json"
fi
if want bench-training; then
    step "bench training fused vs naive" "$out/bench.log" 200 \
        "$bundle/bench-training" --bench --noplot recurrent_train_cuda
    step "bench training torch cuDNN" "$out/bench.log" 120 \
        python3 scripts/torch_gpu_bench.py --train --json "$out/torch_train.json"
fi
if want bench-decoder; then
    step "bench decoder fused vs naive" "$out/bench.log" 200 \
        "$bundle/bench-decoder" --bench --noplot decoder_cuda
    step "bench decoder torch eager (training step)" "$out/bench.log" 120 \
        python3 scripts/torch_decoder_bench.py --device cuda --large
    step "bench decoder torch eager (greedy)" "$out/bench.log" 120 \
        python3 scripts/torch_decoder_bench.py --device cuda --large --greedy
fi
if want bench-attention-backward; then
    step "bench attention backward fused vs naive" "$out/bench.log" 100 \
        "$bundle/bench-attention" --bench --noplot attention_backward_cuda
    step "bench attention backward torch" "$out/bench.log" 100 \
        python3 scripts/torch_attention_bench.py --backward --json "$out/torch_attention_backward.json"
fi
if want bench-attention; then
    step "bench attention fused vs naive" "$out/bench.log" 150 \
        "$bundle/bench-attention" --bench --noplot attention_step_cuda
    step "bench attention torch" "$out/bench.log" 120 \
        python3 scripts/torch_attention_bench.py --json "$out/torch_attention.json"
fi
if want caption; then
    dev=${CAPTION_DEVICE:-cuda}
    log=$out/caption.log
    work=$(mktemp -d)
    step "caption demo [$dev]" "$log" 120 "$bundle/fused-rnn" caption --device "$dev" \
        --report "$work/report" --results "$out/results.json" --references "$work/refs.json"
    step "caption scenes for throughput" "$log" 300 "$bundle/fused-rnn" data digits \
        --out "$work/scenes" --train 16 --val 16 --test 10000
    for search in "$dev f32 --beam 1" "$dev bf16 --beam 1" "$dev f32 --beam 3" "cpu f32 --beam 1"; do
        read -r d t flag k <<<"$search"
        [[ $d == cpu && $t == bf16 ]] && continue
        step "caption throughput [$d $t beam $k]" "$log" 200 "$bundle/fused-rnn" caption \
            --device "$d" --dtype "$t" --beam "$k" --data "$work/scenes" --split test --show 0 \
            --results "$work/r.json" --references "$work/refs.json"
    done
    for batch in 16 64; do
        ckpt=$out/caption-60s-b$batch.safetensors
        step "train caption 60 s [$dev batch $batch]" "$log" 200 "$bundle/fused-rnn" train caption \
            --device "$dev" --minutes 1 --batch "$batch" --conv 32,64 --average 0.5 \
            --weight-decay 0.03 --more-digits --augment 0.5 --eval-every 1000000 --out "$ckpt"
        step "caption with it [$dev batch $batch]" "$log" 120 "$bundle/fused-rnn" caption \
            --device "$dev" --weights "$ckpt" --show 0 --results "$work/r.json" \
            --references "$work/refs.json"
    done
    rm -rf "$work"
    grep -E "^(captioned|[0-9]+ images:|step |using|model:)" "$log"
fi
[ -f "$out/bench.log" ] && grep -E "_forward_|_train_|attention_|time:|^torch|^\| torch" "$out/bench.log" | grep -v -E "Benchmarking|change" | head -400
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
