"""Reports over run dirs: a self-contained HTML report, a runs table, loss-curve comparison."""
