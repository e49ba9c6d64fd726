"""VOC AP: hand-computed cases (VOC07 11-point and VOC2010+ area), difficult gts, duplicates, +1 convention."""
import numpy as np
import pytest

from ssd_tf.evaluation.voc import evaluate_voc, voc_ap

A = [0, 0, 10, 10]


def test_difficult_gt_and_duplicate_detection():
    """One class, two images.

    image 0: gt A (normal), gt B (difficult); image 1: gt C (normal)  ->  npos = 2.
    detections by score:
      .9 img0 on A        -> TP (takes A)
      .8 img0 on A again  -> FP (duplicate of A)
      .7 img0 on B        -> ignored (B is difficult: neither TP nor FP)
      .6 img1 far away    -> FP (no overlap)
      .5 img1 on C        -> TP
    Counted sequence TP, FP, FP, TP:
      cumTP 1, 1, 1, 2   cumFP 0, 1, 2, 2
      recall    .5, .5, .5, 1.0
      precision 1, 1/2, 1/3, 1/2
    VOC07: t = 0, .1, ..., .5 (6 points): max precision at recall >= t is 1
           t = .6, ..., 1.0 (5 points): only recall 1.0 qualifies, precision 1/2
           AP = (6 * 1 + 5 * 0.5) / 11 = 8.5 / 11
    Area:  envelope of precision over recall: 1 up to recall .5, then 1/2 up to recall 1
           AP = .5 * 1 + .5 * .5 = 0.75
    """
    gts = [{"boxes": [A, [20, 20, 30, 30]], "labels": [0, 0], "difficult": [False, True]},
           {"boxes": [A], "labels": [0], "difficult": [False]}]
    dets = [{"boxes": [A, A, [20, 20, 30, 30]], "labels": [0, 0, 0], "scores": [0.9, 0.8, 0.7]},
            {"boxes": [[50, 50, 60, 60], A], "labels": [0, 0], "scores": [0.6, 0.5]}]
    r07 = evaluate_voc(dets, gts, ["cat"], use_07_metric=True)
    r12 = evaluate_voc(dets, gts, ["cat"], use_07_metric=False)
    assert r07["VOC/AP/cat"] == pytest.approx(8.5 / 11, abs=1e-12)
    assert r12["VOC/AP/cat"] == pytest.approx(0.75, abs=1e-12)
    assert r07["VOC/mAP"] == r07["VOC/AP/cat"] and r12["VOC/mAP"] == r12["VOC/AP/cat"]

    # If B were not difficult, the .7 detection would be a TP and npos = 3:
    # TP FP TP FP TP -> recall 1/3 1/3 2/3 2/3 1, precision 1 1/2 2/3 1/2 3/5.
    # area = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5
    gts[0]["difficult"] = [False, False]
    assert evaluate_voc(dets, gts, ["cat"], use_07_metric=False)["VOC/AP/cat"] == pytest.approx(
        (1 + 2 / 3 + 3 / 5) / 3, abs=1e-12)


def test_classes_threshold_and_plus_one():
    """Three classes; "cow" has no gt (AP -1, left out of mAP).

    image 0: gt dog A, gt bird A. detections: bird A .9, dog [0,0,10,20] .8, dog A .3, cow A .95.
    Continuous boxes (plus_one=False): dog [0,0,10,20] vs A: inter 100, union 200, IoU 0.5, not > 0.5 -> FP.
      dog: FP then TP -> recall 0, 1; precision 0, 1/2.
        VOC07: every t has recall 1 available with precision 1/2 -> AP 0.5.
        area: envelope 1/2 over recall (0, 1] -> AP 0.5.
      bird: one TP, npos 1 -> AP 1 (a dog gt at the same place does not match a bird detection).
      mAP = (0.5 + 1) / 2 = 0.75 with both metrics.
    Devkit pixels (plus_one=True): areas 11*11 = 121 and 11*21 = 231, inter 121, IoU 121/231 = 0.524 > 0.5 -> TP.
      dog: TP then duplicate FP -> recall 1, 1; precision 1, 1/2 -> AP 1 (both metrics); mAP = 1.
    """
    gts = [{"boxes": [A, A], "labels": [1, 2]}]  # no "difficult" key: all False
    dets = [{"boxes": [A, [0, 0, 10, 20], A, A], "labels": [2, 1, 1, 3], "scores": [0.9, 0.8, 0.3, 0.95]}]
    names = {1: "dog", 2: "bird", 3: "cow"}
    for use_07 in (True, False):
        r = evaluate_voc(dets, gts, names, use_07_metric=use_07)
        assert r == pytest.approx({"VOC/AP/dog": 0.5, "VOC/AP/bird": 1.0, "VOC/AP/cow": -1.0, "VOC/mAP": 0.75})
        r = evaluate_voc(dets, gts, names, use_07_metric=use_07, plus_one=True)
        assert r == pytest.approx({"VOC/AP/dog": 1.0, "VOC/AP/bird": 1.0, "VOC/AP/cow": -1.0, "VOC/mAP": 1.0})
    # A lower threshold accepts the IoU-0.5 box: dog becomes TP, duplicate -> AP 1.
    assert evaluate_voc(dets, gts, names, iou_threshold=0.49)["VOC/AP/dog"] == pytest.approx(1.0)


def test_voc_ap_curves():
    # 11-point: recall reaches only .45 with precision 1 -> points 0, .1, .2, .3, .4 -> 5/11.
    assert voc_ap(np.array([0.45]), np.array([1.0]), True) == pytest.approx(5 / 11)
    assert voc_ap(np.array([0.45]), np.array([1.0]), False) == pytest.approx(0.45)
    # A precision dip is filled by the envelope: recall .2 .4 .6, precision 1 .5 .75 -> .2*1 + .4*.75.
    assert voc_ap(np.array([0.2, 0.4, 0.6]), np.array([1.0, 0.5, 0.75]), False) == pytest.approx(0.5)


def test_inputs_dicts_empty_and_errors():
    gts = {"img_a": {"boxes": [A], "labels": [0]}, "img_b": {"boxes": np.zeros((0, 4)), "labels": []}}
    # Detections keyed by image id; an image without an entry has no detections.
    dets = {"img_b": {"boxes": [A], "labels": [0], "scores": [0.9]}}
    r = evaluate_voc(dets, gts, ["cat"], use_07_metric=False)
    assert r == {"VOC/AP/cat": 0.0, "VOC/mAP": 0.0}  # the only detection is on an image without gt -> FP
    assert evaluate_voc({}, gts, ["cat"])["VOC/AP/cat"] == 0.0
    assert evaluate_voc([{"boxes": [], "labels": [], "scores": []}], [{"boxes": [], "labels": []}],
                        ["cat"])["VOC/mAP"] == -1.0  # no gt at all
    with pytest.raises(ValueError, match="image 'img_c'"):
        evaluate_voc({"img_c": dets["img_b"]}, gts, ["cat"])
    with pytest.raises(ValueError, match="label 5 which is not in class_names"):
        evaluate_voc([{"boxes": [A], "labels": [5], "scores": [1.0]}], [{"boxes": [A], "labels": [0]}], ["cat"])
    with pytest.raises(ValueError, match="scores has 2 entries but boxes has 1"):
        evaluate_voc([{"boxes": [A], "labels": [0], "scores": [1.0, 2.0]}], [{"boxes": [A], "labels": [0]}],
                     ["cat"])
    with pytest.raises(ValueError, match="1 detection entries but 2 ground-truth entries"):
        evaluate_voc([{"boxes": [A], "labels": [0], "scores": [1.0]}], [{"boxes": [A], "labels": [0]}] * 2,
                     ["cat"])
    with pytest.raises(ValueError, match="normalised"):
        evaluate_voc([{"boxes": [[0, 0, .5, .5]], "labels": [0], "scores": [1.0]}],
                     [{"boxes": [[0, 0, .5, .5]], "labels": [0]}], ["cat"], plus_one=True)


def _reference_voc(dets, gts, num_classes, use_07, thr, offset):
    """Straightforward devkit-style loop (per class, per detection) used as an oracle."""
    aps = {}
    for c in range(num_classes):
        recs = {}
        npos = 0
        for i, g in enumerate(gts):
            sel = np.asarray(g["labels"]) == c
            diff = np.asarray(g["difficult"], bool)[sel]
            recs[i] = {"boxes": np.asarray(g["boxes"], float).reshape(-1, 4)[sel], "difficult": diff,
                       "det": np.zeros(sel.sum(), bool)}
            npos += int((~diff).sum())
        entries = [(s, i, b) for i, d in enumerate(dets)
                   for s, b, l in zip(d["scores"], np.asarray(d["boxes"], float).reshape(-1, 4), d["labels"])
                   if l == c]
        entries.sort(key=lambda e: -e[0])  # Python's sort is stable: ties keep input order
        tp, fp = [], []
        for _, i, b in entries:
            r = recs[i]
            ovmax, jmax = -np.inf, -1
            for j, g in enumerate(r["boxes"]):
                iw = min(b[2], g[2]) - max(b[0], g[0]) + offset
                ih = min(b[3], g[3]) - max(b[1], g[1]) + offset
                inter = max(iw, 0) * max(ih, 0)
                uni = (b[2] - b[0] + offset) * (b[3] - b[1] + offset) + (g[2] - g[0] + offset) * (
                    g[3] - g[1] + offset) - inter
                ov = inter / uni
                if ov > ovmax:
                    ovmax, jmax = ov, j
            if ovmax > thr:
                if r["difficult"][jmax]:
                    continue
                if not r["det"][jmax]:
                    r["det"][jmax] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = ctp / npos
        prec = ctp / np.maximum(ctp + cfp, 1e-300)
        if use_07:
            ap = sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in np.arange(0, 1.1, 0.1)) / 11
        else:
            mrec, mpre = np.r_[0, rec, 1], np.r_[0, prec, 0]
            for k in range(len(mpre) - 2, -1, -1):
                mpre[k] = max(mpre[k], mpre[k + 1])
            idx = np.where(mrec[1:] != mrec[:-1])[0]
            ap = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
        aps[c] = ap
    return aps


@pytest.mark.parametrize("seed", range(4))
def test_matches_loop_reference_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    num_classes = 3
    gts, dets = [], []
    for _ in range(12):
        m = int(rng.integers(0, 6))
        xy = rng.integers(0, 60, (m, 2))
        g = np.concatenate([xy, xy + rng.integers(5, 40, (m, 2))], 1).astype(float)
        gts.append({"boxes": g, "labels": rng.integers(0, num_classes, m), "difficult": rng.uniform(size=m) < 0.2})
        n = int(rng.integers(0, 10))
        src = g[rng.integers(0, m, n)] if m else np.zeros((n, 4))
        jitter = rng.integers(-6, 7, (n, 4))
        d = src + jitter
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        scores = np.round(rng.uniform(size=n), 1)  # coarse scores: plenty of ties
        dets.append({"boxes": d, "labels": rng.integers(0, num_classes, n), "scores": scores})
    names = ["a", "b", "c"]
    for use_07 in (True, False):
        for plus_one in (False, True):
            ours = evaluate_voc(dets, gts, names, use_07_metric=use_07, plus_one=plus_one)
            ref = _reference_voc(dets, gts, num_classes, use_07, 0.5, 1.0 if plus_one else 0.0)
            assert {k: v for k, v in ours.items() if k.startswith("VOC/AP/") and v != -1.0} == pytest.approx(
                {f"VOC/AP/{names[c]}": ap for c, ap in ref.items()}, abs=1e-12)
            assert ours["VOC/mAP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-12)


def test_real_voc2012_sample_matches_loop_reference(shared_data):
    """100 real VOC2012 images (38 difficult objects) with model detections; both metrics, both box conventions."""
    from defusedxml import ElementTree

    root = shared_data / "voc2012_sample/data/database"
    names = (root / "voc.names").read_text().split()
    gts, dets = [], []
    for xml in sorted((root / "gts/pascalvoc_format").glob("*.xml")):
        objects = ElementTree.parse(str(xml)).getroot().findall("object")
        boxes = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
        gts.append({"boxes": np.array(boxes).reshape(-1, 4),
                    "labels": [names.index(o.find("name").text) for o in objects],
                    "difficult": [o.find("difficult").text == "1" for o in objects]})
        txt = root / "dets/abs_xyx2y2" / (xml.stem + ".txt")
        rows = np.loadtxt(txt, ndmin=2).reshape(-1, 6) if txt.exists() else np.zeros((0, 6))
        dets.append({"boxes": rows[:, 2:], "labels": rows[:, 0].astype(int), "scores": rows[:, 1]})
    assert len(gts) == 100 and sum(np.sum(g["difficult"]) for g in gts) == 38
    for use_07 in (True, False):
        for plus_one in (False, True):
            ours = evaluate_voc(dets, gts, names, use_07_metric=use_07, plus_one=plus_one)
            ref = _reference_voc(dets, gts, len(names), use_07, 0.5, 1.0 if plus_one else 0.0)
            assert len(ref) == 20
            assert ours["VOC/mAP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-12)
            assert 0.2 < ours["VOC/mAP"] < 1.0
