"""Embedded data: scikit-learn's digits, synthetic tasks and an offline text corpus. No downloads."""

from paperlab.data.batching import batch_at, batch_indices, epoch_permutation, sample_batch
from paperlab.data.digits import (DIGIT_TRANSFORMS, ROT_DIGITS_TASKS, Dataset, TaskDigits, digits, split_by_class,
                                  stratified_split, transformed_digits)
from paperlab.data.synthetic import (MultiTask, imbalanced, long_tail_counts, multitask_toy, noisy_labels,
                                     teacher_student, with_label_noise)
from paperlab.data.pruning import kmeans, prototype_scores, prune
from paperlab.data.text import (CharTokenizer, TextData, char_dataset, corpus, sample_sequences,
                                stdlib_docstrings)

__all__ = [
    "Dataset", "digits", "split_by_class", "stratified_split", "MultiTask", "imbalanced", "long_tail_counts",
    "multitask_toy", "noisy_labels", "teacher_student", "with_label_noise", "CharTokenizer", "TextData",
    "char_dataset", "corpus", "sample_sequences", "stdlib_docstrings", "batch_at", "epoch_permutation",
    "sample_batch", "batch_indices", "TaskDigits", "transformed_digits", "DIGIT_TRANSFORMS", "ROT_DIGITS_TASKS",
    "kmeans", "prototype_scores", "prune",
]
