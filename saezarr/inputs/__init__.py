"""What the user gives: the labeled sentences, their fragments, the SAE configuration file and bundled catalogues."""
