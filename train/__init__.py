"""respi_edge.train"""
