"""respi_edge.export"""
