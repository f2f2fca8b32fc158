"""Datasets: reading image folders, building and checking imagefolder datasets, training subsets."""
