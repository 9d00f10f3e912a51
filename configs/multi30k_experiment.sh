#!/usr/bin/env bash
# One Multi30k result end to end, as docs/results.md reports it: train a config on one thread,
# average its last 5 validated checkpoints, choose the length penalty alpha on the validation
# split (never on a test set) for the best and for the averaged checkpoint, then score both
# test sets with that alpha and beam 5.
#
#   configs/multi30k_experiment.sh CONFIG [RUN_DIR [nmt fit overrides...]]
#     configs/multi30k_experiment.sh configs/multi30k_hyperlstm.yaml
#     configs/multi30k_experiment.sh configs/multi30k_hyperlstm.yaml runs/multi30k_hyperlstm-seed2 \
#         --seed_everything 2 --model.init_args.seed 2 --data.init_args.seed 2
#
# Environment (defaults in brackets):
#   NMT      the nmt command                                  [nmt]
#   THREADS  torch threads for training and evaluation        [1]
#   ALPHAS   length-penalty exponents tried on validation     [0.0 0.2 ... 2.0]
#   BEAM     beam size                                        [5]
#   AVERAGE  how many recent checkpoints to average           [5]
#   CORPUS   the prepared corpus                              [data/multi30k.en-de]
#   PYTHON   an interpreter with HyperNMT installed           [python]
#   LIMIT    score only the first N sentences of each split (a quick check of the recipe) [all]
# Writes RUN_DIR/summary.json (with the updates trained: fewer than the config's max_steps when
# its max_time guard ended training, which `nmt fit` warns of) and prints one Markdown table row
# per checkpoint, and which of the two validation picks ("chosen": the higher validation BLEU).
# A run whose training finished (RUN_DIR/training_seconds.txt) is only evaluated again.
set -euo pipefail

config=${1:?usage: $0 CONFIG [RUN_DIR [nmt fit overrides...]]}
shift
run=${1:-runs/$(basename "$config" .yaml)}
shift || true
NMT=${NMT:-nmt}
THREADS=${THREADS:-1}
ALPHAS=${ALPHAS:-0.0 0.2 0.4 0.6 0.8 1.0 1.2 1.4 1.6 1.8 2.0}
BEAM=${BEAM:-5}
AVERAGE=${AVERAGE:-5}
CORPUS=${CORPUS:-data/multi30k.en-de}
PYTHON=${PYTHON:-python}
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
export OMP_NUM_THREADS=$THREADS

if [ -f "$run/training_seconds.txt" ]; then  # a finished run: evaluate it again only
    echo "$run is trained ($(cat "$run/training_seconds.txt") s); evaluating"
else
    rm -rf "$run/eval"  # reports of an earlier training in this directory
    started=$(date +%s)
    $NMT fit --config "$config" --data.init_args.corpus "$CORPUS" \
        --trainer.logger.init_args.save_dir "$run" --checkpoint.dirpath "$run/checkpoints" "$@"
    echo "$(($(date +%s) - started))" > "$run/training_seconds.txt"
fi

best=$(ls -t "$run"/checkpoints/best-*.ckpt | head -n 1)
$NMT average --last "$AVERAGE" --out "$run/checkpoints/average.ckpt" "$run"/checkpoints/recent-*.ckpt

evaluate() {  # checkpoint split alpha out-dir (kept if already there: a rerun adds alphas)
    [ -f "$4/$2.json" ] && return
    $NMT evaluate --checkpoint "$1" --corpus "$CORPUS" --split "$2" --alpha "$3" \
        --beam-size "$BEAM" --threads "$THREADS" --no-progress --out-dir "$4" "${limit[@]}" > /dev/null
}
pick_alpha() {  # the alpha whose validation BLEU is highest (the smallest on a tie)
    "$PYTHON" - "$1" <<'PY'
import json, sys
from pathlib import Path
reports = sorted(Path(sys.argv[1]).glob("val-alpha*/val.json"))
scores = [(json.loads(p.read_text())["bleu"]["score"], -float(p.parent.name[9:])) for p in reports]
print(-max(scores)[1])
PY
}

for name in best average; do
    checkpoint=$best
    [ "$name" = average ] && checkpoint=$run/checkpoints/average.ckpt
    for alpha in $ALPHAS; do
        evaluate "$checkpoint" val "$alpha" "$run/eval/$name/val-alpha$alpha"
    done
    alpha=$(pick_alpha "$run/eval/$name")
    echo "$alpha" > "$run/eval/$name/alpha.txt"
    for split in test_2016_flickr test_2017_flickr; do
        evaluate "$checkpoint" "$split" "$alpha" "$run/eval/$name/test-alpha$alpha"
    done
done

"$PYTHON" - "$run" "$best" <<'PY'
import json, sys
from pathlib import Path
from nmt.checkpoints import load_checkpoint_file
run, best = Path(sys.argv[1]), Path(sys.argv[2]).name
updates = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"]
summary = {"run": str(run), "updates": updates, "best_checkpoint": best, "checkpoints": {}}
print(f"{run.name}: {updates} updates, best checkpoint {best}")
for name in ("best", "average"):
    alpha = (run / "eval" / name / "alpha.txt").read_text().strip()
    test_dir = run / "eval" / name / f"test-alpha{alpha}"
    read = lambda path: json.loads(path.read_text())
    val = read(run / "eval" / name / f"val-alpha{alpha}" / "val.json")
    row = {"alpha": float(alpha), "val_bleu": val["bleu"]["score"]}
    for split in ("test_2016_flickr", "test_2017_flickr"):
        report = read(test_dir / f"{split}.json")
        row[split] = {"bleu": report["bleu"]["score"], "chrf": report["chrf"]["score"]}
        summary["signature"] = report["bleu"]["signature"]
    summary["checkpoints"][name] = row
    t16, t17 = row["test_2016_flickr"], row["test_2017_flickr"]
    print(f"| {run.name} | {name} | {row['alpha']:.1f} | {row['val_bleu']:.2f} | "
          f"{t16['bleu']:.2f} | {t16['chrf']:.1f} | {t17['bleu']:.2f} | {t17['chrf']:.1f} |")
# the checkpoint validation picks (the best single one on a tie): what the run reports
rows = summary["checkpoints"]
summary["chosen"] = max(rows, key=lambda name: (rows[name]["val_bleu"], name == "best"))
print(f"validation picks: {summary['chosen']}")
(run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PY
