#!/bin/bash
# one behaviour's runs (one process per call, each < ~3 min CPU)
B=$1; S=${2:-800}
cd "$(dirname "$0")"
R="nice -n 10 env OMP_NUM_THREADS=1 timeout 175 python train_probe.py"
$R $B pog_lin,pog_mlp,mean_lin,mean_mlp --ctx c100x1 --steps $S
$R $B pog_lin,pog_mlp,mean_mlp --ctx c64x2 --steps $S
[ "$B" = rand ] && $R $B gru_lin --ctx c100x1 --steps 400
