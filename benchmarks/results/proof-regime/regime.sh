#!/bin/bash
# Proof-regime measurement (issue 13): full training of ResNet-20 and ResNet-56, CIFAR-10
# 20,000-image subset, 10 epochs, seed 0. Resumable: run again to continue (from last.ckpt).
# ResNet-20 ran with 1 thread at nice 19 on the code of 5843d73 (fp32, contiguous); ResNet-56
# with 2 threads on the code of this script's commit (--precision auto: fp32 channels_last).
cd "$(dirname "$0")/../../.." || exit 1
OUT=benchmarks/results/proof-regime
for model in resnet20 resnet56; do
  run=$OUT/$model-20k-10ep-s0
  [ -f $run/summary.json ] && continue
  extra=()
  [ -f $run/last.ckpt ] && extra=(--resume $run)
  /usr/bin/time -v .venv/bin/python -m learndrop train --model $model \
    --dataset folder:../shared/data/cifar10-jpg.tar.gz --subset 20000 --epochs 10 \
    --batch-size 128 --lr 0.1 --warmup-epochs 1 --seed 0 --method full --device cpu \
    --quiet --out $run "${extra[@]}" >> $OUT/$model-20k-10ep-s0.log 2>&1
done
