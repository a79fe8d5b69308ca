"""respi_edge.runtime"""
