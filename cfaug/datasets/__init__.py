"""Datasets: counterfactual datasets and the biased MNIST variants of the CGN paper."""
