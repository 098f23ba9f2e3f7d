"""The HTML reports and their figures."""
