"""kdeval's mmdetection-style RetinaNet against mmdetection 3.3.0's own, on random weights (not a test:
it needs mmdetection, which kdeval never imports). Run with a scratch environment beside the project's:

    python -m venv /tmp/mmenv && /tmp/mmenv/bin/pip install mmengine mmcv-lite==2.1.0 shapely terminaltables
    /tmp/mmenv/bin/pip install --no-deps mmdet==3.3.0
    python tests/reference_mmdet.py [H W]  # the project's python: its torch, mmdetection appended to sys.path

mmcv's compiled ops do not build against this torch, so mmcv.ops is stubbed and its batched_nms is
torchvision's: the one step of mmdetection's path that is not its own code. Checked: the real
mmdetection RetinaNet R50's state_dict loads through kdeval's key map; head outputs, anchors, decoded
boxes, postprocessing on tie-free head outputs, and detections through both test pipelines.
"""
import importlib.abc, importlib.machinery, sys, types
sys.path.append(f"/tmp/mmenv/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages")
import torch, numpy as np
from torchvision.ops import batched_nms as tv_batched_nms

class _Dummy:
    def __init__(self, *a, **k): pass
class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"): raise AttributeError(name)
        return _Dummy
def _batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
    keep = tv_batched_nms(boxes, scores, idxs, nms_cfg["iou_threshold"])
    return torch.cat([boxes[keep], scores[keep, None]], 1), keep
class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "mmcv.ops" or name.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        m = _StubModule(spec.name); m.__path__ = []; m.batched_nms = _batched_nms; m.nms = None
        return m
    def exec_module(self, module): pass
sys.meta_path.insert(0, _Finder())

from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
register_all_modules()

cfg = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                  norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch'),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1, add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(type='RetinaHead', num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
                   anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                   bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0]),
                   loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                   loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
from mmengine.config import ConfigDict
mm = MODELS.build(ConfigDict(cfg)).eval()
torch.manual_seed(0)
with torch.no_grad():
    for name, t in mm.state_dict().items():
        if name.endswith("num_batches_tracked"): continue
        if name.endswith("running_var"): t.uniform_(0.5, 1.5)
        elif name.endswith(("running_mean", "bias")): t.normal_(0, 0.1)
        else: t.normal_(0, 0.02)
    mm.bbox_head.retina_cls.bias.fill_(-3.0)

from mmdet.datasets import CocoDataset
classes = CocoDataset.METAINFO["classes"]
torch.save({"meta": {"dataset_meta": {"classes": classes}}, "state_dict": mm.state_dict()}, "/tmp/mm_r50.pth")
from kdeval.models.checkpoint import load_checkpoint
loaded = load_checkpoint("/tmp/mm_r50.pth")
kd = loaded.model.eval()
print("loaded", loaded.spec)

# 1. the same normalised, padded batch through both networks
# default: an exact 2× resize to 800×1216, no padding, whose constant maps tie scores; give another
# size (python tests/reference_mmdet.py 427 641) for unequal x and y scale factors
H0, W0 = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (400, 608)
rng = np.random.default_rng(0)
rgb = rng.integers(0, 256, (H0, W0, 3), dtype=np.uint8)
image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
with torch.no_grad():
    batch, _ = kd.transform([image])
    x = batch.tensors
    mm_cls, mm_reg = mm.bbox_head(mm.neck(mm.backbone(x)))
    feats = kd.backbone(x)
    kd_head = kd.head(list(feats.values()))
A = 9
def flat(levels, k):
    return torch.cat([l.permute(0, 2, 3, 1).reshape(l.shape[0], -1, k) for l in levels], 1)
print("max |cls logits diff|", (flat(mm_cls, 80) - kd_head["cls_logits"]).abs().max().item(), "scale", flat(mm_cls, 80).abs().max().item())
print("max |bbox deltas diff|", (flat(mm_reg, 4) - kd_head["bbox_regression"]).abs().max().item())
sizes = [l.shape[-2:] for l in mm_cls]
mm_anchors = torch.cat(mm.bbox_head.prior_generator.grid_priors(sizes, device="cpu"))
kd_anchors = torch.cat(kd.anchor_generator.grid_anchors([tuple(s) for s in sizes], None))
print("anchors equal:", torch.equal(mm_anchors, kd_anchors), "max diff", (mm_anchors - kd_anchors).abs().max().item())
deltas = torch.randn(1000, 4) * 2
print("decode max diff", (mm.bbox_head.bbox_coder.decode(mm_anchors[:1000], deltas, max_shape=(800, 1067)) - kd.box_coder.decode_single(deltas, mm_anchors[:1000]).clamp(min=0).minimum(torch.tensor([1067., 800., 1067., 800.]))).abs().max().item())

# 2. detections from the same batch: mmdetection's predict_by_feat vs kdeval's postprocess
h, w = batch.image_sizes[0]
meta = dict(img_shape=(h, w), ori_shape=(H0, W0), scale_factor=(w / W0, h / H0), pad_shape=tuple(x.shape[-2:]))
with torch.no_grad():
    mm_det = mm.bbox_head.predict_by_feat(mm_cls, mm_reg, batch_img_metas=[meta], rescale=True)[0]
    from kdeval.models.postprocess import NetworkOutputs
    per_level = [s[0] * s[1] * 9 for s in sizes]
    outputs = NetworkOutputs(
        head_outputs={"cls_logits": list(flat(mm_cls, 80).split(per_level, 1)), "bbox_regression": list(flat(mm_reg, 4).split(per_level, 1))},
        anchors=[list(mm_anchors.split(per_level))], image_sizes=batch.image_sizes, original_image_sizes=[(H0, W0)])
    kd_det = kd.postprocess_batch(outputs)[0]  # mmdetection's own head outputs and anchors in, kdeval's postprocessing
print("detections", len(mm_det.bboxes), len(kd_det["boxes"]))
n = min(len(mm_det.bboxes), len(kd_det["boxes"]))
print("same labels in order:", torch.equal(mm_det.labels[:n], kd_det["labels"][:n]))
print("max |score diff|", (mm_det.scores[:n] - kd_det["scores"][:n]).abs().max().item())
print("max |box diff| px", (mm_det.bboxes[:n] - kd_det["boxes"][:n]).abs().max().item())
with torch.no_grad():
    kd_full = kd([image])[0]
n = min(len(mm_det.bboxes), len(kd_full["boxes"]))
print("kdeval end to end vs mmdetection on the same batch: same labels", torch.equal(mm_det.labels[:n], kd_full["labels"][:n]),
      "max |score diff|", (mm_det.scores[:n] - kd_full["scores"][:n]).abs().max().item(), "max |box diff|", (mm_det.bboxes[:n] - kd_full["boxes"][:n]).abs().max().item())
kd_det = kd_full

# 3. the whole test pipeline (cv2 resize of a BGR image, data_preprocessor) against kdeval's transform
from mmdet.apis import inference_detector
from mmengine.config import ConfigDict
mm.cfg = Config(dict(test_dataloader=dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromNDArray'), dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]))))
mm.dataset_meta = {"classes": classes}
with torch.no_grad():
    full = inference_detector(mm, rgb[:, :, ::-1].copy()).pred_instances
    data = mm.data_preprocessor({"inputs": [torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))], "data_samples": None}, False)
print("pipeline detections", len(full.bboxes), len(kd_det["boxes"]))
n = min(len(full.bboxes), len(kd_det["boxes"]))
print("pipeline: same labels in order", torch.equal(full.labels[:n], kd_det["labels"][:n]), "max |score diff|", (full.scores[:n] - kd_det["scores"][:n]).abs().max().item(),
      "max |box diff| px", (full.bboxes[:n] - kd_det["boxes"][:n]).abs().max().item())

def keyset(boxes, labels, scores):
    return {(int(l), round(float(s), 4)) for b, l, s in zip(boxes, labels, scores)}
a = keyset(mm_det.bboxes, mm_det.labels, mm_det.scores)
with torch.no_grad():
    kd_same = kd.postprocess_batch(outputs)[0]
b = keyset(kd_same["boxes"], kd_same["labels"], kd_same["scores"])
print("common (label, score):", len(a & b), "of", len(a), len(b))
print("mm scores", mm_det.scores[:5], mm_det.scores[-3:])
print("kd scores", kd_same["scores"][:5], kd_same["scores"][-3:])
wh = mm_det.bboxes[:, 2:] - mm_det.bboxes[:, :2]
print("mm min w,h", wh.min(0).values, "kd min", (kd_same["boxes"][:, 2:] - kd_same["boxes"][:, :2]).min(0).values)

def matched(d1b, d1l, d1s, d2b, d2l, d2s, tol=1e-3):
    used, hits, worst = set(), 0, 0.0
    for b, l, s in zip(d1b, d1l, d1s):
        for j, (b2, l2, s2) in enumerate(zip(d2b, d2l, d2s)):
            if j not in used and l == l2 and abs(float(s - s2)) < 1e-6 and (b - b2).abs().max() < tol:
                used.add(j); hits += 1; worst = max(worst, float((b - b2).abs().max())); break
    return hits, worst
print("same inputs, kdeval postprocess vs mmdetection predict_by_feat: matched", matched(mm_det.bboxes, mm_det.labels, mm_det.scores, kd_same["boxes"], kd_same["labels"], kd_same["scores"]), "of", len(mm_det.bboxes))
print("same batch end to end: matched", matched(mm_det.bboxes, mm_det.labels, mm_det.scores, kd_full["boxes"], kd_full["labels"], kd_full["scores"], 1e-2), "of", len(mm_det.bboxes))
print("full mmdet pipeline vs kdeval: matched", matched(full.bboxes, full.labels, full.scores, kd_full["boxes"], kd_full["labels"], kd_full["scores"], 0.5), "of", len(full.bboxes))
print("score at 100th", mm_det.scores[99].item(), "101st-ish threshold ties:", int((mm_det.scores == mm_det.scores[99]).sum()))

# tie-free head outputs (random logits and deltas) through both postprocessings
g = torch.Generator().manual_seed(5)
r_cls = [torch.randn(l.shape, generator=g) * 1.5 - 3.5 for l in mm_cls]
r_reg = [torch.randn(l.shape, generator=g) * 0.5 for l in mm_reg]
with torch.no_grad():
    mm_r = mm.bbox_head.predict_by_feat(r_cls, r_reg, batch_img_metas=[meta], rescale=True)[0]
    out_r = NetworkOutputs(head_outputs={"cls_logits": list(flat(r_cls, 80).split(per_level, 1)), "bbox_regression": list(flat(r_reg, 4).split(per_level, 1))},
                           anchors=[list(mm_anchors.split(per_level))], image_sizes=batch.image_sizes, original_image_sizes=[(H0, W0)])
    kd_r = kd.postprocess_batch(out_r)[0]
print("tie-free: detections", len(mm_r.bboxes), len(kd_r["boxes"]), "distinct scores", len(set(mm_r.scores.tolist())))
print("tie-free: labels equal in order", torch.equal(mm_r.labels, kd_r["labels"]), "scores equal", torch.equal(mm_r.scores, kd_r["scores"]),
      "max |box diff| px", (mm_r.bboxes - kd_r["boxes"]).abs().max().item())
print("tie-free matched", matched(mm_r.bboxes, mm_r.labels, mm_r.scores, kd_r["boxes"], kd_r["labels"], kd_r["scores"]))
def unmatched(d1b, d1l, d1s, d2b, d2l, d2s):
    out = []
    for b, l, s in zip(d1b, d1l, d1s):
        if not any(l == l2 and abs(float(s - s2)) < 1e-6 and (b - b2).abs().max() < 1e-3 for b2, l2, s2 in zip(d2b, d2l, d2s)):
            out.append((b.tolist(), int(l), float(s)))
    return out
print("only mmdet:", unmatched(mm_r.bboxes, mm_r.labels, mm_r.scores, kd_r["boxes"], kd_r["labels"], kd_r["scores"]))
print("only kdeval:", unmatched(kd_r["boxes"], kd_r["labels"], kd_r["scores"], mm_r.bboxes, mm_r.labels, mm_r.scores))
print("random-weight network: distinct scores among mmdet's 100:", len(set(mm_det.scores.tolist())), "; kdeval's:", len(set(kd_same["scores"].tolist())))
