"""respi_edge.bench"""
