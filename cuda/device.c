/* placeholder: replaced by device discovery */
