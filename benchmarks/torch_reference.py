"""A PyTorch reference implementation of ``Deform3DTransformer``, for the benchmark.

Written independently of the Flax code from its definition (docs/model.md): same layers, same
shapes, same FLOPs, and the same parameter tree, so ``params_from_flax`` loads a Flax
checkpoint and ``tests/test_torch_reference.py`` checks that both give the same logits and
gradients. The trilinear sampling is ``torch.nn.functional.grid_sample`` on 5-D input.

Functional style: ``forward(params, frames, keypoints, cfg, train=...)`` where ``params`` is a
nested dict of tensors named like the Flax tree and ``cfg`` holds the model's fields. Only
the benchmark suites (``benchmarks/suites.py``) and the tests import this module; the model, ops
and training code never import torch.

``cfg["fast"]`` (the Flax model's field) selects the same speed rewrites as
``deform3d/models/fast.py``, so that a benchmark can compare the same program on both sides:
the offset projection folded into the depthwise offset conv (one matmul on patches), the
relative-position MLP's second layer as a sum over its hidden units (no ``(B, G, Q, Nk,
hidden)`` tensor), and the joint attention's projections run once per token before the
regrouping (``1 + P * J`` tokens per frame instead of ``groups * (1 + window)``), its output
projection after the merge. Not ported: the XLA-specific heads-first matmuls (torch's batched
matmul needs no help) and the pooled design's query pooling inside the attention.
``tests/test_torch_reference.py`` checks both forms against the Flax model.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

_NEG_INF = -1e9


def model_fields(model) -> dict:
  """The Flax module's fields as a plain dict (``cfg`` of ``forward``)."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in ("parent", "name")}


def params_from_flax(params, requires_grad: bool = False) -> dict:
  """Flax param tree (NumPy/JAX arrays) -> the same nested dict of float32 torch tensors."""
  if isinstance(params, Mapping):
    return {k: params_from_flax(v, requires_grad) for k, v in params.items()}
  t = torch.tensor(np.asarray(params, dtype=np.float32))
  return t.requires_grad_(requires_grad)


# -- pieces -----------------------------------------------------------------------------------
def dense(p, x):
  """Flax ``Dense``/``DenseGeneral`` with kernel ``(in..., out...)``: contracts x's last axes
  with the kernel's leading ones."""
  k = p["kernel"]
  return _dense_general(x, k, p.get("bias"), 1)


def _dense_general(x, kernel, bias, n_in):
  in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
  lead = x.shape[:x.dim() - n_in]
  y = x.reshape(-1, math.prod(in_shape)) @ kernel.reshape(math.prod(in_shape), -1)
  if bias is not None:
    y = y + bias.reshape(-1)
  return y.reshape(lead + out_shape)


def layer_norm(p, x):
  return F.layer_norm(x, x.shape[-1:], p["scale"], p["bias"], eps=1e-6)


def gelu(x):
  return F.gelu(x, approximate="tanh")  # flax.linen.gelu's default


def mha(p, x_q, x_kv, num_heads, bias=None, mask=None):
  """Multi-head attention over arbitrary leading axes; ``mask`` True = may attend."""
  q = dense(p["query"], x_q)    # (..., Lq, H, D)
  k = dense(p["key"], x_kv)
  v = dense(p["value"], x_kv)
  head_dim = q.shape[-1]
  logits = torch.einsum("...qhd,...khd->...hqk", q, k) * head_dim ** -0.5
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = logits.masked_fill(~mask, _NEG_INF)
  weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
  out = torch.einsum("...hqk,...khd->...qhd", weights, v)
  return _dense_general(out, p["out"]["kernel"], p["out"]["bias"], 2)


def drop_path(x, rate, train):
  if not train or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = (torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) < keep)
  return torch.where(mask, x / keep, torch.zeros_like(x))


def pad_frames(x, multiple):
  pad = (-x.shape[1]) % multiple
  if not pad:
    return x
  return torch.cat([x, x[:, -1:].repeat_interleave(pad, dim=1)], dim=1)


def temporal_pool(x, stride):
  if stride == 1:
    return x
  x = pad_frames(x, stride)
  return x.reshape((x.shape[0], x.shape[1] // stride, stride) + x.shape[2:]).mean(dim=2)


def patchify(x, pt, ph, pw):
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // pt, h // ph, w // pw, pt * ph * pw * c)


def joint_groups(num_joints, window, stride):
  """``(groups, window)`` joint indices, ``-1`` = padding: blocks of ``window * stride`` joints,
  group ``r`` of a block takes its joints ``r, r + stride, ...`` (docs/model.md)."""
  span = window * stride
  rows = []
  for start in range(0, num_joints, span):
    for r in range(stride):
      row = [start + r + k * stride for k in range(window)]
      row = [x if x < num_joints else -1 for x in row]
      if any(x >= 0 for x in row):
        rows.append(row)
  return np.array(rows, dtype=np.int64)


def cell_centres(n, device=None):
  return (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n * 2.0 - 1.0


# -- modules ----------------------------------------------------------------------------------
def rgb_stem(p, frames, cfg):
  s1, s2 = cfg["stem_strides"]
  x = gelu(layer_norm(p["norm1"], dense(p["conv1"], patchify(frames, 1, s1, s1))))
  x = layer_norm(p["norm2"], dense(p["conv2"], patchify(x, cfg["stem_temporal_stride"], s2, s2)))
  return x + (p["pos_t"] + p["pos_h"] + p["pos_w"])


def pose_features(kp, normalize=False):
  xy = kp[..., :2]
  present = (kp[..., 2:3] > 0).to(kp.dtype) if kp.shape[-1] > 2 else torch.ones_like(xy[..., :1])
  count = present.sum(dim=2, keepdim=True).clamp_min(1.0)
  centre = (xy * present).sum(dim=2, keepdim=True) / count
  rel = (xy - centre) * present
  motion = torch.cat([torch.zeros_like(rel[:, :1]), rel[:, 1:] - rel[:, :-1]], dim=1)
  prev = torch.cat([torch.zeros_like(present[:, :1]), present[:, :-1]], dim=1)
  motion = motion * present * prev
  if normalize:  # the clip's body size: RMS offset over its present joints and frames
    count = present.sum(dim=(1, 2, 3)).clamp(min=1.0)
    power = (rel ** 2).sum(dim=(1, 2, 3)) / count  # root of 1, not 0, where nobody is present:
    size = torch.sqrt(torch.where(power > 0, power, torch.ones_like(power)))[:, None, None, None]
    rel, motion = rel / size, motion / size
  return torch.cat([kp, rel, motion], dim=-1)


def pose_embed(p, keypoints, b, cfg):
  """``keypoints (B, P, T, J, D)`` -> ``(B, T', P * J, C)``: the persons side by side."""
  persons = keypoints.shape[1]
  tokens = p["joint_embed"][None, None] + p["time_embed"][:, None]        # (T', 1, J, C)
  if persons > 1:
    tokens = tokens + p["person_embed"][None]                             # (T', P, J, C)
  tokens = tokens.expand(-1, persons, -1, -1).flatten(1, 2)
  tokens = tokens.expand((b,) + tokens.shape)
  if cfg["use_pose"]:
    feats = [temporal_pool(pose_features(keypoints[:, m].float(), cfg.get("pose_norm", False)),
                           cfg["stem_temporal_stride"]) for m in range(persons)]
    x = dense(p["coord_fc2"], gelu(dense(p["coord_fc1"], torch.cat(feats, dim=2))))
    if cfg.get("pose_norm", False):
      x = layer_norm(p["coord_norm"], x)
    tokens = tokens + x
  return tokens


def deformable_attention(p, queries, query_pos, volume, cfg, context=None, context_pos=None,
                         pool=1):
  """``volume``: the normalized RGB tokens ``(B, T, H, W, C)``; ``context (B, M, C)`` with
  positions ``(B, M, 3)``: extra keys/values after the sampled ones."""
  b, t, h, w, c = volume.shape
  g, heads = cfg["num_groups"], cfg["num_heads"]
  cg = c // g
  group = lambda x: x.reshape(b, t, h, w, g, cg).permute(0, 4, 1, 2, 3, 5).reshape(b * g, t, h, w, cg)
  st, sh, sw = cfg["offset_strides"]
  pads = [(-n) % s for n, s in zip((t, h, w), (st, sh, sw))]
  if cfg.get("fast"):
    off = _offsets_fast(p, volume, cfg)                             # (B*G, Ts, Hs, Ws, 3)
  else:
    off_in = group(dense(p["offset_proj"], volume)).permute(0, 4, 1, 2, 3)  # (B*G, Cg, T, H, W)
    if any(pads):
      off_in = F.pad(off_in, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
    dw = p["offset_dwconv"]  # flax nn.Conv kernel (kt, kh, kw, 1, Cg) -> torch (Cg, 1, kt, kh, kw)
    off = F.conv3d(off_in, dw["kernel"].permute(4, 3, 0, 1, 2), dw["bias"], stride=(st, sh, sw),
                   groups=cg).permute(0, 2, 3, 4, 1)
    off = gelu(layer_norm(p["offset_norm"], off))
    off = dense(p["offset_out"], off.float())                       # (B*G, Ts, Hs, Ws, 3)
  ts, hs, ws = off.shape[1:4]
  zz, yy, xx = torch.meshgrid(cell_centres(ts), cell_centres(hs), cell_centres(ws), indexing="ij")
  ref = torch.stack([xx, yy, zz], dim=-1)
  rng = cfg["offset_range_factor"] * 2.0 / torch.tensor([ws, hs, ts], dtype=torch.float32)
  pos = (ref[None] + torch.tanh(off) * rng).clamp(-1.0, 1.0)
  grouped = group(volume).permute(0, 4, 1, 2, 3)                    # (B*G, Cg, T, H, W)
  sampled = F.grid_sample(grouped, pos.to(grouped.dtype), mode="bilinear", padding_mode="zeros",
                          align_corners=False)                      # (B*G, Cg, Ts, Hs, Ws)
  ns = ts * hs * ws
  keys = sampled.reshape(b, g, cg, ns).permute(0, 3, 1, 2).reshape(b, ns, c)
  key_pos = pos.reshape(b, g, ns, 3)
  if context is not None:
    keys = torch.cat([keys, context], dim=1)
    key_pos = torch.cat([key_pos, context_pos[:, None].expand(b, g, -1, 3)], dim=2)
  if cfg.get("fast"):
    bias = _rel_pos_bias_fast(p, query_pos.float(), key_pos.float(), heads)
  else:
    rel = query_pos[:, None, :, None, :] - key_pos[:, :, None, :, :]  # (B, G, Q, Nk, 3)
    hidden = torch.relu(dense(p["rpb_fc1"], rel.float()))
    bias = dense(p["rpb_fc2"], hidden)                              # (B, G, Q, Nk, H/G)
    bias = bias.permute(0, 1, 4, 2, 3).reshape(b, heads, query_pos.shape[1], keys.shape[1])
  out = mha(p["attn"], queries, keys, heads, bias=bias)
  if pool > 1:
    out = out.reshape(b, -1, pool, c).mean(dim=2)
  return out


def _offsets_fast(p, volume, cfg):
  """The offset network with ``offset_proj`` folded into the depthwise conv: one ``(k * C, C)``
  matmul on the edge-padded patches of the volume -> raw offsets ``(B*G, Ts, Hs, Ws, 3)``."""
  b, t, h, w, c = volume.shape
  g = cfg["num_groups"]
  cg = c // g
  st, sh, sw = cfg["offset_strides"]
  k = st * sh * sw
  dw, proj = p["offset_dwconv"], p["offset_proj"]
  kernel = dw["kernel"].reshape(k, cg).repeat(1, g)                  # (k, C), tiled over groups
  fused = (kernel[:, None, :] * proj["kernel"][None]).reshape(k * c, c)
  pads = [(-n) % s for n, s in zip((t, h, w), (st, sh, sw))]
  x = volume
  if any(pads):
    x = F.pad(x.permute(0, 4, 1, 2, 3), (0, pads[2], 0, pads[1], 0, pads[0]),
              mode="replicate").permute(0, 2, 3, 4, 1)
  off = patchify(x, st, sh, sw) @ fused + (proj["bias"] * kernel.sum(0) + dw["bias"].repeat(g))
  ts, hs, ws = off.shape[1:4]
  off = gelu(layer_norm(p["offset_norm"], off.reshape(b, ts, hs, ws, g, cg)))
  off = dense(p["offset_out"], off.float())                          # (B, Ts, Hs, Ws, G, 3)
  return off.permute(0, 4, 1, 2, 3, 5).reshape(b * g, ts, hs, ws, 3)


def _rel_pos_bias_fast(p, query_pos, key_pos, heads):
  """``MLP(q - k)`` per head as ``(W1 q + b1) - W1 k`` and a sum over the hidden units:
  ``query_pos (B, Q, 3)``, ``key_pos (B, G, Nk, 3)`` -> ``(B, heads, Q, Nk)``."""
  b, g, nk, _ = key_pos.shape
  w1, b1 = p["rpb_fc1"]["kernel"], p["rpb_fc1"]["bias"]
  w2, b2 = p["rpb_fc2"]["kernel"], p["rpb_fc2"]["bias"]
  hq = query_pos @ w1 + b1                                           # (B, Q, hid)
  hk = key_pos @ w1                                                  # (B, G, Nk, hid)
  bias = [b2[i] for i in range(w2.shape[1])]
  for j in range(w2.shape[0]):
    hidden = torch.relu(hq[:, None, :, None, j] - hk[:, :, None, :, j])  # (B, G, Q, Nk)
    bias = [acc + w2[j, i] * hidden for i, acc in enumerate(bias)]
  return torch.stack(bias, dim=2).reshape(b, heads, query_pos.shape[1], nk)


def _joint_attention_fast(p, z, cfg, idx, present, mask, weight):
  """Joint attention with the projections on the ``1 + P * J`` tokens of a frame, regrouped
  afterwards, and the output projection after the merge (the same function)."""
  b, t, n, c = z.shape
  ng, w = idx.shape
  heads = cfg["num_heads"]
  safe = torch.as_tensor(np.maximum(idx, 0).reshape(-1))
  pad = torch.as_tensor((idx >= 0)[..., None, None], dtype=z.dtype)  # (Ng, w, 1, 1)

  def split(x):                                                      # (B, T, N, H, D)
    joints = x[:, :, 1:].index_select(2, safe).reshape(b, t, ng, w, heads, -1) * pad
    return torch.cat([x[:, :, None, :1].expand(b, t, ng, 1, heads, x.shape[-1]), joints], 3)

  q, k, v = (split(dense(p["attn"][name], z)) for name in ("query", "key", "value"))
  logits = torch.einsum("...qhd,...khd->...hqk", q, k) * q.shape[-1] ** -0.5
  logits = logits.masked_fill(~mask, _NEG_INF)
  out = torch.einsum("...hqk,...khd->...qhd", torch.softmax(logits.float(), -1).to(v.dtype), v)
  cross = (out[:, :, :, 0] * weight[:, None, :, None, None]).sum(dim=2, keepdim=True) / \
      weight.sum(dim=1).clamp_min(1.0)[:, None, None, None, None]
  slot = np.zeros(n - 1, np.int64)
  g_i, s_i = np.nonzero(idx >= 0)
  slot[idx[g_i, s_i]] = g_i * w + s_i
  joints = out[:, :, :, 1:].reshape(b, t, ng * w, heads, -1).index_select(2, torch.as_tensor(slot))
  merged = torch.cat([cross, joints], dim=2)                          # (B, T, 1 + P * J, H, D)
  return _dense_general(merged, p["attn"]["out"]["kernel"], p["attn"]["out"]["bias"], 2)


def joint_stride_attention(p, z, cfg, stride, idx, present):
  """``idx``: the groups of every person's joints (indices into ``P * J``); ``present (B, G)``:
  whether each group's person is in the clip (absent: its joints are masked keys and the group
  is left out of the cross token's mean)."""
  b, t, n, c = z.shape
  j = n - 1
  ng, w = idx.shape
  valid = torch.as_tensor(np.concatenate([np.ones((ng, 1), bool), idx >= 0], axis=1))
  keys = torch.cat([torch.ones_like(present[..., None]), present[..., None].expand(b, ng, w)], -1)
  mask = (valid[None] & keys)[:, None, :, None, None, :]                # (B, 1, G, 1, 1, 1 + w)
  weight = (present | ~present.any(dim=1, keepdim=True)).to(z.dtype)  # nobody: all groups
  if cfg.get("fast"):
    return _joint_attention_fast(p, z, cfg, idx, present, mask, weight)
  safe = torch.as_tensor(np.maximum(idx, 0).reshape(-1))
  grouped = z[:, :, 1:].index_select(2, safe).reshape(b, t, ng, w, c)
  cross = z[:, :, None, :1].expand(b, t, ng, 1, c)
  tokens = torch.cat([cross, grouped], dim=3)
  out = mha(p["attn"], tokens, tokens, cfg["num_heads"], mask=mask)
  new_cross = (out[:, :, :, 0] * weight[:, None, :, None]).sum(dim=2, keepdim=True) / \
      weight.sum(dim=1).clamp_min(1.0)[:, None, None, None]
  onehot = torch.as_tensor(idx[..., None] == np.arange(j), dtype=out.dtype)
  new_joints = torch.einsum("btgwc,gwj->btjc", out[:, :, :, 1:], onehot)
  return torch.cat([new_cross, new_joints], dim=2)


def temporal_stride_attention(p, z, cfg):
  b, t, n, c = z.shape
  w = min(cfg["temporal_window"], t)
  pad = (-t) % w
  x = z.permute(0, 2, 1, 3)
  if pad:
    x = F.pad(x, (0, 0, 0, pad))
  nw = (t + pad) // w
  x = x.reshape(b, n, nw, w, c)
  mask = torch.as_tensor((np.arange(t + pad) < t).reshape(nw, 1, 1, w))
  out = mha(p["attn"], x, x, cfg["num_heads"], mask=mask)
  return out.reshape(b, n, t + pad, c)[:, :, :t].permute(0, 2, 1, 3)


def temporal_merge(p, z, stride):
  if stride == 1:
    return z
  b, t, n, c = z.shape
  z = pad_frames(z, stride)
  t2 = z.shape[1] // stride
  z = z.reshape(b, t2, stride, n, c).permute(0, 1, 3, 2, 4).reshape(b, t2, n, stride * c)
  return dense(p["reduce"], layer_norm(p["norm"], z))


def cross_positions(b, t, k):
  time = cell_centres(t)[:, None, None].expand(t, k, 1)
  return torch.cat([torch.zeros(t, k, 2), time], dim=-1).reshape(1, t * k, 3).expand(b, t * k, 3)


def mlp(p, x):
  return dense(p["fc2"], gelu(dense(p["fc1"], x)))


def temporal_layers(p, z, cfg, i, res):
  z = z + res("drop_temporal", temporal_stride_attention(
      p["temporal_attn"], layer_norm(p["norm_temporal"], z), cfg))
  z = temporal_merge(p.get("temporal_merge"), z, cfg["temporal_strides"][i])
  return z + res("drop_mlp", mlp(p["mlp"], layer_norm(p["norm_mlp"], z)))


def block(p, rgb, cross, pose, cfg, i, train, groups):
  """The paper's block (docs/model.md): deformable attention with RGB + cross-modal queries and
  sampled + cross-modal keys, RGB MLP, joint stride attention with the cross-attention token
  (mean of the K cross tokens), temporal stride attention, merges, MLP."""
  res = _residual(p, cfg, i, train)
  b, t, k, c = cross.shape
  if rgb is not None:
    _, tr, h, w, _ = rgb.shape
    n = tr * h * w
    x = layer_norm(p["norm_rgb"], rgb)
    m = layer_norm(p["norm_cross"], cross).reshape(b, t * k, c)
    zz, yy, xx = torch.meshgrid(cell_centres(tr), cell_centres(h), cell_centres(w), indexing="ij")
    if cfg["rgb_query_pos"] == "frame":  # ablation: the RGB queries at their frame's centre
      xx, yy = torch.zeros_like(xx), torch.zeros_like(yy)
    rgb_pos = torch.stack([xx, yy, zz], dim=-1).reshape(1, n, 3).expand(b, n, 3)
    m_pos = cross_positions(b, t, k)
    y = deformable_attention(p["cross_attn"], torch.cat([x.reshape(b, n, c), m], dim=1),
                             torch.cat([rgb_pos, m_pos], dim=1), x, cfg, m, m_pos)
    rgb = rgb + res("drop_rgb", y[:, :n].reshape(rgb.shape))
    cross = cross + res("drop_cross", y[:, n:].reshape(cross.shape))
    rgb = rgb + res("drop_rgb_mlp", mlp(p["rgb_mlp"], layer_norm(p["norm_rgb_mlp"], rgb)))
  z = torch.cat([cross.mean(dim=2, keepdim=True), pose], dim=2)
  y = res("drop_joint", joint_stride_attention(p["joint_attn"], layer_norm(p["norm_joint"], z),
                                               cfg, cfg["joint_strides"][i], *groups))
  cross, pose = cross + y[:, :, :1], pose + y[:, :, 1:]
  z = temporal_layers(p, torch.cat([cross, pose], dim=2), cfg, i, res)
  if rgb is not None and cfg["rgb_merge"]:
    _, tr, h, w, _ = rgb.shape
    rgb = temporal_merge(p.get("rgb_merge"), rgb.reshape(b, tr, h * w, c),
                         cfg["temporal_strides"][i])
    rgb = rgb.reshape(b, rgb.shape[1], h, w, c)
  return rgb, z[:, :, :k], z[:, :, k:]


def pooled_block(p, rgb, cross, pose, pose_pos, cfg, i, train, groups):
  """The earlier design (``design="pooled"``): cross + joint tokens query the never-updated RGB
  tokens; the mean of a frame's outputs updates its one cross token."""
  res = _residual(p, cfg, i, train)
  z = torch.cat([cross, pose], dim=2)
  b, t, n, c = z.shape
  if rgb is not None:
    q = layer_norm(p["norm_cross"], z).reshape(b, t * n, c)
    q_pos = torch.cat([cross_positions(b, t, 1).reshape(b, t, 1, 3), pose_pos], dim=2)
    y = deformable_attention(p["cross_attn"], q, q_pos.reshape(b, t * n, 3),
                             layer_norm(p["norm_rgb"], rgb), cfg, pool=n)
    z = torch.cat([z[:, :, :1] + res("drop_cross", y.reshape(b, t, 1, c)), z[:, :, 1:]], dim=2)
  z = z + res("drop_joint", joint_stride_attention(
      p["joint_attn"], layer_norm(p["norm_joint"], z), cfg, cfg["joint_strides"][i], *groups))
  z = temporal_layers(p, z, cfg, i, res)
  return z[:, :, :1], z[:, :, 1:], temporal_pool(pose_pos, cfg["temporal_strides"][i])


def _residual(p, cfg, i, train):
  rate = cfg["drop_path"] * i / max(cfg["depth"] - 1, 1)
  # A LayerScale where the block has one (``layer_scale``, or the gate ``cross_rgb_scale``).
  return lambda name, y: drop_path(y * p[f"{name}_scale"] if f"{name}_scale" in p else y, rate,
                                   train)


def forward(params, frames, keypoints, cfg, train: bool = False):
  """Logits ``(B, num_classes)``; the same computation as ``Deform3DTransformer.apply``
  (dropout rates must be 0; drop path is applied when ``train``)."""
  if cfg["dropout"] or cfg["attn_dropout"]:
    raise ValueError("torch_reference: dropout and attn_dropout must be 0 (the reference "
                     "implements drop path only)")
  b = keypoints.shape[0]
  if keypoints.dim() == 4:
    keypoints = keypoints[:, None]                                        # one person
  persons, j = keypoints.shape[1], keypoints.shape[3]
  present = torch.ones(b, persons, dtype=torch.bool)
  if persons > 1 and cfg["use_pose"] and keypoints.shape[-1] > 2:
    present = (keypoints[..., 2] > 0).flatten(2).any(dim=2)
  rgb = rgb_stem(params["rgb_stem"], frames, cfg) if cfg["use_rgb"] else None
  pose = pose_embed(params["pose_embed"], keypoints, b, cfg)
  t, c = pose.shape[1], cfg["embed_dim"]
  if persons == 1:
    keypoints = keypoints[:, 0]
  paper = cfg["design"] == "paper"
  k = cfg["num_cross_tokens"] if paper else 1
  cross = params["cross_token"].expand(b, t, k, c)
  if rgb is not None:
    pooled = torch.cat([rgb.mean(dim=(2, 3)), rgb.amax(dim=(2, 3))], dim=-1)
    init = dense(params["cross_init"], pooled)[:, :, None]
    cross = torch.cat([cross[:, :, :1] + init, cross[:, :, 1:]], dim=2)
  pose_pos = None
  if not paper:
    xy = torch.zeros((b, t, j, 2))
    if cfg["use_pose"]:
      xy = temporal_pool(keypoints[..., :2].float(), cfg["stem_temporal_stride"]).clamp(-1.0, 1.0)
    time = cell_centres(t)[None, :, None, None].expand(b, t, j, 1)
    pose_pos = torch.cat([xy, time], dim=-1)
  for i in range(cfg["depth"]):
    one = joint_groups(j, min(cfg["joint_window"], j), cfg["joint_strides"][i])
    groups = np.concatenate([np.where(one >= 0, one + m * j, -1) for m in range(persons)])
    groups = (groups, present[:, np.repeat(np.arange(persons), len(one))])
    if paper:
      rgb, cross, pose = block(params[f"block{i}"], rgb, cross, pose, cfg, i, train, groups)
    else:
      cross, pose, pose_pos = pooled_block(params[f"block{i}"], rgb, cross, pose, pose_pos, cfg,
                                           i, train, groups)
  cls = layer_norm(params["norm_out"], cross.mean(dim=(1, 2)))
  return dense(params["head"], cls.float())
