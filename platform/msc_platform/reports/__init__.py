"""Tables, statistics and plots of finished runs, read back from MLflow. Imports neither torch nor
Ray."""
