"""Self-contained report building blocks (SVG charts) shared by the audit and the simulator."""
