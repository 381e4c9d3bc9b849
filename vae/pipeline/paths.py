"""Where the pipeline's stages read and write, relative to the project root (dvc.yaml names the same paths)."""

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
PREPARED_DIR = Path("data") / "prepared"
PREPARED_TRAIN = PREPARED_DIR / "train.pt"
PREPARED_VAL = PREPARED_DIR / "val.pt"  # absent when data.val_size is 0
PREPARED_TEST = PREPARED_DIR / "test.pt"
MODEL = Path("models") / "vae.pth"  # whatever data it was trained on (its checkpoint says which)
METRICS_DIR = Path("metrics")
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_HISTORY = METRICS_DIR / "train_history.csv"
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"
OUTPUTS = Path("outputs")
# the MLflow run each stage execution logged to (evaluate and generate runs are children of the train run)
TRAIN_RUN_ID = OUTPUTS / "train_run_id.txt"
EVALUATE_RUN_ID = OUTPUTS / "evaluate_run_id.txt"
GENERATE_RUN_ID = OUTPUTS / "generate_run_id.txt"
EVALUATE_DIR = OUTPUTS / "evaluate"
GENERATE_DIR = OUTPUTS / "generate"
CLASSIFIER = Path("models") / "classifier.pth"
CLASSIFIER_METRICS = METRICS_DIR / "classifier.json"
