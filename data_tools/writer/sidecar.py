"""The sidecar `{prefix}.meta.json`: label map, counts, every skip with its reason, options and the shards
written, assembled from the shards' stats (see the contract in ../shared/DESIGN.md)."""
from __future__ import annotations

FORMAT_VERSION = 1


def build_sidecar(records, shard_stats, num_shards, label_map, skips, pre_entries, source, verify, strict) -> dict:
    per_label, formats = {}, {}
    writer_entries = list(pre_entries)
    totals = dict.fromkeys(("num_records", "num_objects", "images_without_objects", "clipped_boxes",
                            "reencoded_images"), 0)
    shards = []
    for k in range(num_shards):
        s = shard_stats[k]
        for key in totals:
            totals[key] += s[key]
        for label, n in s["objects_per_label"].items():
            per_label[label] = per_label.get(label, 0) + n
        for fmt, n in s["formats"].items():
            formats[fmt] = formats.get(fmt, 0) + n
        writer_entries.extend(s["skipped"])
        shards.append({"file": s["file"], "num_records": s["num_records"], "bytes": s["bytes"],
                       "framing_crc32c": s["framing_crc32c"]})
    writer_entries.sort(key=lambda e: (e[0], e[1]))
    new_entries = [{"kind": kind, "where": where, "reason": reason} for _, _, kind, where, reason in writer_entries]
    skips.entries.extend(new_entries)  # the caller's report now has everything
    per_class = {}
    for label, name in label_map.items():
        per_class[str(name)] = per_class.get(str(name), 0) + per_label.get(str(label), 0)
    counts = {}
    for e in skips.entries:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    return {
        "format_version": FORMAT_VERSION,
        "source": source,
        "label_map": [{"id": int(k), "name": str(v)} for k, v in label_map.items()],
        "num_source_images": len(records),
        "num_images": totals["num_records"],
        "num_objects": totals["num_objects"],
        "objects_per_class": per_class,
        "objects_per_class_id": {str(k): per_label.get(str(k), 0) for k in label_map},
        "images_without_objects": totals["images_without_objects"],
        "clipped_boxes": totals["clipped_boxes"],
        "image_formats": dict(sorted(formats.items())),
        "reencoded_images": totals["reencoded_images"],
        "skipped_counts": counts,
        "skipped": list(skips.entries),
        "options": {"num_shards": num_shards, "verify_images": verify, "strict": strict},
        "shards": shards,
    }
