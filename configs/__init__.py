"""respi_edge.configs"""
