"""Fed-LTD: federated learning to dispatch across ride-hailing platforms (Wang et al., KDD 2022)."""
