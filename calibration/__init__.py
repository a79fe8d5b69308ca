"""respi_edge.calibration"""
