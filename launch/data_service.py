"""tf.data service for training input on other machines (docs/scaling.md):

  python launch/data_service.py dispatcher --port 5050 [--work_dir DIR]
  python launch/data_service.py worker --dispatcher HOST:5050 [--port 5051] [--worker_address HOST:%port%]

then train with ``--config.dataset.service=grpc://HOST:5050``. Each server runs until killed;
the library is ``data_pipelines/service.py``.
"""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="role", required=True)
  d = sub.add_parser("dispatcher", help="hand out the input pipeline's work")
  d.add_argument("--port", type=int, default=5050)
  d.add_argument("--work_dir", default=None, help="keep the dispatcher's state (fault tolerant)")
  w = sub.add_parser("worker", help="run the input pipeline for a dispatcher")
  w.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
  w.add_argument("--port", type=int, default=0, help="0: any free port")
  w.add_argument("--worker_address", default=None,
                 help="how trainers reach this worker, e.g. myhost:%%port%% (default localhost)")
  args = parser.parse_args()
  from data_pipelines import service
  if args.role == "dispatcher":
    server = service.start_dispatcher(args.port, args.work_dir)
    print(f"dispatcher: {server.target}", flush=True)
  else:
    server = service.start_worker(args.dispatcher, args.port, args.worker_address)
    print(f"worker of {args.dispatcher}: serving", flush=True)
  server.join()


if __name__ == "__main__":
  main()
