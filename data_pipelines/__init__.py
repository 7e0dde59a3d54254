"""Raw data -> sharded TFRecords, and the tf.data input pipeline. The only TensorFlow users."""
