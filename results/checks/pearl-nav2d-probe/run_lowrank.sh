#!/bin/bash
# diagonal (pog) against low-rank (pogr1, pogr2) factors: algo.factor_rank 0 / 1 / 2
cd "$(dirname "$0")"
R="nice -n 10 env OMP_NUM_THREADS=1 python train_probe.py"
$R line pog_lin,pogr1_lin,pogr2_lin --ctx c64x2,c100x1 --steps 800
$R line pog_lin,pogr1_lin --ctx c64x2 --steps 3000
$R rand pog_lin,pogr1_lin --ctx c64x2,c100x1 --steps 800
$R wrong pog_lin,pogr1_lin --ctx c64x2 --steps 800
