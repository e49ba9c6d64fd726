"""--precision=auto decides from the instruction set, never by guessing."""
from ssd_tf.training.precision import cpu_flags, machine_summary, resolve_precision


def test_auto_picks_bf16_only_with_native_bfloat16_instructions():
    assert resolve_precision("auto", {"avx2", "avx512f", "amx_bf16", "amx_tile"}, check_gpu=False)[0] == "bf16"
    assert resolve_precision("auto", {"avx2", "avx512f", "avx512_bf16"}, check_gpu=False)[0] == "bf16"
    precision, why = resolve_precision("auto", {"avx2", "fma"}, check_gpu=False)  # e.g. Zen3
    assert precision == "fp32" and "neither amx_bf16 nor avx512_bf16" in why
    assert resolve_precision("fp16", {"amx_bf16"}, check_gpu=False) == ("fp16", "--precision=fp16 was asked for")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    summary = machine_summary()
    assert {"cpu_model", "avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= set(summary)
