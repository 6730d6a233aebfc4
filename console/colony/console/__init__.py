"""Colony's operator console (`colony console`): a Textual app that follows the cluster's
change stream live and lets operators act on jobs and nodes."""
