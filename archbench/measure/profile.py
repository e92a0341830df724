"""One profile row per model: size, compute (two counters), speed, memory, provenance."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archbench.measure.flops import BACKENDS, count_macs
from archbench.measure.params import count_params
from archbench.measure.speed import measure_speed


def profile_model(model: nn.Module, *, name: str | None = None, speed: bool = True, batch_size: int = 8,
                  device: str = "cpu", dtype: str = "fp32", channels_last: bool = False, compile: str = "none",
                  threads: int | None = None, repeats: int = 10, train: bool = True) -> dict[str, Any]:
    """Measure a built model (it must carry ``.spec``). A counter that fails leaves its
    field ``None`` and its reason in ``<counter>_error``; the row still comes."""
    from archbench.results import provenance

    spec = model.spec
    input_size = (spec.in_chans, *spec.img_size)
    pc = count_params(model)
    row: dict[str, Any] = {
        "name": name or getattr(model, "zoo_name", None) or f"{spec.macro}:{'+'.join(sorted({s.mixer for s in spec.stages}))}",
        "macro": spec.macro, "mixers": sorted({s.mixer for s in spec.stages}),
        "ffns": sorted({s.ffn for s in spec.stages}), "img_size": list(spec.img_size),
        "params": pc.total, "params_trainable": pc.trainable,
        **{f"params_{k}": v for k, v in pc.by_component.items()},
    }
    for backend in BACKENDS:
        try:
            macs = count_macs(model, (1, *input_size), backend=backend)
            row[f"gmacs_{backend}"] = macs.gmacs
            row[f"{backend}_skipped"] = macs.skipped
            row[f"{backend}_error"] = None
            if macs.by_part:
                row.update({f"gmacs_{k}": v / 1e9 for k, v in macs.by_part.items()})
        except Exception as e:  # noqa: BLE001 - a counter's failure is data, not a crash
            row[f"gmacs_{backend}"] = None
            row[f"{backend}_skipped"] = None
            row[f"{backend}_error"] = f"{type(e).__name__}: {e}"[:500]
    speed_fields = ("throughput", "latency_ms", "latency_p90_ms", "train_throughput", "peak_mem_mb",
                    "train_peak_mem_mb")
    if speed:
        res = measure_speed(model, input_size, batch_size=batch_size, device=device, dtype=dtype,
                            channels_last=channels_last, compile=compile, threads=threads, repeats=repeats,
                            train=train)
        row.update(res.as_dict())
    else:
        from archbench.measure.speed import device_name
        row.update(dict.fromkeys(speed_fields), batch_size=None, device=device_name(torch.device(device)),
                   dtype=dtype, threads=threads or torch.get_num_threads(), channels_last=channels_last,
                   compile=compile)
    row["spec"] = spec.to_json()
    row.update(provenance())
    return row
