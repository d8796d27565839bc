"""C++ CPU backend: ``shift.cpp`` compiled at first use by :mod:`torchshift2.cpu.loader`."""
