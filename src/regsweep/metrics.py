"""The names of what a run measures, defined once: training logs them to MLflow and to the
Optuna trial; the decisions, the re-evaluation, the report and the MLflow links read them.
(Keras's own per-epoch keys, such as "val_loss", stay Keras's.)"""

TRAIN_ACCURACY = "train_accuracy"  # inference mode, on the un-augmented training images
VAL_ACCURACY = "val_accuracy"
TEST_ACCURACY = "test_accuracy"
GAP = "gap"  # train_accuracy − val_accuracy: the honest gap
TEST_GAP = "test_gap"  # train_accuracy − test_accuracy
RUNNING_TRAIN_ACCURACY = "running_train_accuracy"  # Keras's, on augmented batches, dropout on
BEST_VAL_LOSS = "best_val_loss"  # at the epoch early stopping kept
TRAIN_IMAGES = "train_images"
VAL_IMAGES = "val_images"
TEST_IMAGES = "test_images"
