#!/usr/bin/env bash
# Install se-inject into a venv that already holds a torch (and its torchvision), as a user would,
# and show that the torch stays: the dry run, the real install, apply(timm resnet50) against timm's
# seresnet50, export_onnx without and with the onnx extra. Results: benchmarks/results/install_beside_torch.md
#
#   python3 -m venv /tmp/v && /tmp/v/bin/pip install torch==2.13.0 torchvision==0.28.0
#   bash benchmarks/install_beside_torch.sh /tmp/v
set -u
V=${1:?usage: install_beside_torch.sh VENV (a venv with torch and torchvision installed)}
V=$(cd "$V" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/src   # the files git tracks, as a clone has them
mkdir -p "$SRC" && git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$SRC")
quiet() { grep -v "is ignored: it is neither"; }   # this machine's pip config names a missing local index
"$V/bin/pip" freeze 2>/dev/null | sort > "$WORK/before.txt"
echo "== before: $(wc -l < "$WORK/before.txt") packages; $(grep -iE '^(torch|torchvision)==' "$WORK/before.txt" | tr '\n' ' ')"
echo "== pip install --dry-run <checkout>"
"$V/bin/pip" install --dry-run "$SRC" 2>&1 | quiet | grep -E "^Would install|ERROR"
echo "== pip install <checkout>"
"$V/bin/pip" install -q "$SRC" 2>&1 | quiet
"$V/bin/pip" freeze 2>/dev/null | sort > "$WORK/after.txt"
echo "== changed or removed by the install (expect none):"
comm -23 "$WORK/before.txt" "$WORK/after.txt"
echo "== added: $(comm -13 "$WORK/before.txt" "$WORK/after.txt" | sed 's/==.*//; s/ @ .*//' | tr '\n' ' ')"
cd "$WORK"
echo "== apply(timm resnet50) vs timm seresnet50"
"$V/bin/python" - <<'PY'
import torch, timm, se_inject
print("torch", torch.__version__, "| se_inject from", se_inject.__file__)
ours, ref = se_inject.apply(timm.create_model("resnet50"), r=16), timm.create_model("seresnet50")
shapes = lambda m: [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
print("same names, shapes, order:", shapes(ours) == shapes(ref))
ours.load_state_dict(ref.state_dict())
x = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    print("max |output diff| with seresnet50's weights:", (ours.eval()(x) - ref.eval()(x)).abs().max().item())
PY
echo "== export_onnx without the onnx extra"
"$V/bin/python" -c "
import timm, se_inject
se_inject.export_onnx(se_inject.apply(timm.create_model('resnet18')), 'se_resnet18.onnx', (3, 64, 64))" 2>&1 | tail -1
"$V/bin/se-inject" export resnet18 -o se_resnet18.onnx; echo "exit status $?"
echo "== pip install '<checkout>[onnx]'"
"$V/bin/pip" install -q "$SRC[onnx]" 2>&1 | quiet
"$V/bin/pip" freeze 2>/dev/null | grep -iE "^(torch|torchvision|onnx|onnxruntime|onnxscript)==" | tr '\n' ' '; echo
"$V/bin/python" -c "
import timm, se_inject
print(se_inject.export_onnx(se_inject.apply(timm.create_model('resnet18')), 'se_resnet18.onnx', (3, 64, 64)))"
