print('generated')
